using System.Reflection;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.Paging;

namespace Nestor.Hypervisor.Tests;

/// <summary>The P2M and the nested page table speak in typed addresses in public (issue 11): a raw ulong there may
/// carry permissions or an entry's bits, never an address.</summary>
public class TypedPagingApiTests
{
    private static readonly Regex AddressName = new("address|physical|linear|virtual|root|host|guest|gpa|hpa|frame|page", RegexOptions.IgnoreCase);

    private static bool IsRaw(Type t) => t == typeof(ulong) || t == typeof(ulong?) || t == typeof(ulong).MakeByRefType();

    public static TheoryData<Type> Types => [typeof(GuestPhysicalMap), typeof(NestedPageTable)];

    [Theory]
    [MemberData(nameof(Types))]
    public void No_public_member_carries_an_address_as_a_raw_ulong(Type type)
    {
        var offenders = new List<string>();
        const BindingFlags Public = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (var method in type.GetMethods(Public).Where(m => !m.IsSpecialName))
        {
            offenders.AddRange(method.GetParameters().Where(p => IsRaw(p.ParameterType) && AddressName.IsMatch(p.Name!))
                .Select(p => $"{type.Name}.{method.Name}({p.Name})"));
            if (IsRaw(method.ReturnType) && AddressName.IsMatch(method.Name))
            {
                offenders.Add($"{type.Name}.{method.Name} returns ulong");
            }
        }
        offenders.AddRange(type.GetProperties(Public).Where(p => IsRaw(p.PropertyType) && AddressName.IsMatch(p.Name))
            .Select(p => $"{type.Name}.{p.Name}"));
        Assert.True(offenders.Count == 0, "raw ulong addresses in public: " + string.Join(", ", offenders));
    }

    [Fact]
    public void The_check_would_see_a_raw_address()
    {
        // The rule itself: a method shaped like the old API is caught.
        var old = typeof(Sample).GetMethod(nameof(Sample.TryHostPhysical))!;
        Assert.Contains(old.GetParameters(), p => IsRaw(p.ParameterType) && AddressName.IsMatch(p.Name!));
    }

    private static class Sample
    {
        public static bool TryHostPhysical(ulong guestPhysical, out ulong hostPhysical) => (hostPhysical = guestPhysical) != 0;
    }
}
