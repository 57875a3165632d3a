using System.Reflection;
using System.Text.RegularExpressions;
using Nestor.Machine.Addresses;
using Nestor.Machine.Paging;

namespace Nestor.Machine.Tests;

/// <summary>The paging API speaks in typed addresses (issue 11): no public member of a paging type takes or returns
/// a raw <see cref="ulong"/> whose name says it is an address.</summary>
public sealed partial class TypedAddressTests
{
    // What a name says when it is an address: linear and virtual addresses, physical ones (guest or host), roots
    // and tables of page tables, and pages (a page's address).
    [GeneratedRegex("address|physical|linear|virtual|root|gpa|hpa|gva|table|page|host", RegexOptions.IgnoreCase)]
    private static partial Regex AddressName();

    private static readonly Type[] PagingTypes =
    [
        typeof(Mmu), typeof(PageWalker), typeof(NestedWalker), typeof(Tlb), typeof(PageWalkCache), typeof(IGuestPhysicalTranslator),
        typeof(WalkResult), typeof(WalkStep), typeof(TlbEntry), typeof(PagingControls), typeof(MmuConfiguration),
        typeof(NestedPagingConfiguration), typeof(TlbConfiguration),
    ];

    // Members not converted yet, each with the reason; the test also fails when one of them stops being raw, so
    // that the list only shrinks. WalkResult, WalkStep, TlbEntry and PageWalkCache serve walks of more than one kind
    // of address (the MMU's linear-to-host walk, the guest dimension of a 2-D walk whose output is guest-physical,
    // a VMM's software walk of guest tables, the nested TLB keyed by guest-physical addresses): their one field
    // needs a decision on which type it carries.
    private static readonly HashSet<string> NotYetTyped =
    [
        "WalkResult.PhysicalPage", "WalkStep.TableAddress", "WalkStep.EntryAddress",
        "WalkStep..ctor(TableAddress)", "WalkStep..ctor(EntryAddress)",
        "WalkStep.Deconstruct(TableAddress)", "WalkStep.Deconstruct(EntryAddress)",
        "TlbEntry.VirtualPage", "TlbEntry.PhysicalPage",
        "PageWalkCache.Lookup(linear)", "PageWalkCache.Lookup(nextTable)", "PageWalkCache.Peek(linear)",
        "PageWalkCache.Insert(linear)", "PageWalkCache.Insert(nextTable)",
    ];

    /// <summary>Every public member of <paramref name="types"/> that takes or returns a raw ulong (or ulong?) named as
    /// an address, as "Type.Member" or "Type.Method(parameter)".</summary>
    internal static List<string> RawAddresses(IEnumerable<Type> types, Regex addressName)
    {
        static bool Raw(Type t)
        {
            var element = t.IsByRef ? t.GetElementType()! : t;
            return element == typeof(ulong) || element == typeof(ulong?);
        }
        var found = new List<string>();
        const BindingFlags Public = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (var type in types)
        {
            // Constants are masks and bits of entries (AddressMask), not addresses.
            foreach (var field in type.GetFields(Public).Where(f => !f.IsLiteral))
            {
                if (Raw(field.FieldType) && addressName.IsMatch(field.Name))
                {
                    found.Add($"{type.Name}.{field.Name}");
                }
            }
            foreach (var property in type.GetProperties(Public))
            {
                if (Raw(property.PropertyType) && addressName.IsMatch(property.Name))
                {
                    found.Add($"{type.Name}.{property.Name}");
                }
            }
            foreach (var method in type.GetMethods(Public).Where(m => !m.IsSpecialName).Cast<MethodBase>().Concat(type.GetConstructors()))
            {
                if (method is MethodInfo info && Raw(info.ReturnType) && addressName.IsMatch(method.Name))
                {
                    found.Add($"{type.Name}.{method.Name}");
                }
                foreach (var parameter in method.GetParameters())
                {
                    if (Raw(parameter.ParameterType) && addressName.IsMatch(parameter.Name ?? ""))
                    {
                        found.Add($"{type.Name}.{method.Name}({parameter.Name})");
                    }
                }
            }
        }
        return found;
    }

    [Fact]
    public void No_public_paging_member_takes_or_returns_a_raw_address()
    {
        var raw = RawAddresses(PagingTypes, AddressName());
        Assert.Equal([], raw.Where(r => !NotYetTyped.Contains(r)).ToArray());
        Assert.Equal([], NotYetTyped.Where(r => !raw.Contains(r)).Order().ToArray());
    }

    [Fact]
    public void The_check_finds_a_raw_address()
    {
        Assert.Equal(["Sample.Root", "Sample.Map(guestPhysical)", "Sample.ToHost"], RawAddresses([typeof(Sample)], AddressName()));
    }

    [Fact]
    public void The_addresses_are_one_ulong_each()
    {
        foreach (var type in new[] { typeof(GuestPhysical), typeof(HostPhysical), typeof(GuestVirtual) })
        {
            Assert.True(type.IsValueType);
            Assert.Equal([typeof(ulong)], type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic).Select(f => f.FieldType));
            Assert.True(type.IsDefined(typeof(System.Runtime.CompilerServices.IsReadOnlyAttribute)), $"{type.Name} is a readonly struct");
        }
    }

    [Fact]
    public void Typed_translation_is_the_raw_one_wrapped()
    {
        var m = new TestMemory();
        var mmu = new Mmu(m.Memory, MmuConfiguration.Default);
        mmu.SetControlRegisters(PagingControls.LongMode4Level(m.Cr3));
        m.Map(0x40_0000_1000, 0x9000, TestMemory.P | TestMemory.W);
        Assert.Null(mmu.Translate(new GuestVirtual(0x40_0000_1234), AccessKind.Read, false, false, out HostPhysical typed));
        Assert.Null(mmu.Translate(0x40_0000_1234, AccessKind.Read, false, false, out ulong raw));
        Assert.Equal(raw, typed.Value);
        Assert.Equal(0x9234UL, typed.Value);
    }

    private sealed class Sample
    {
        public ulong Root { get; set; }

        public ulong Count { get; set; }

        public void Map(ulong guestPhysical, ulong size) => Count = guestPhysical + size;

        public ulong ToHost(GuestPhysical guestPhysical) => guestPhysical.Value;
    }
}

/// <summary>The counter vectors hold one slot per counter of their enums (their lengths are constants, for the
/// inline arrays that keep a counter one field access away).</summary>
public sealed class CounterVectorLengthTests
{
    [Fact]
    public void Each_vector_has_one_slot_per_counter()
    {
        Assert.Equal(Processor.CpuCounters.Length, Enum.GetValues<Processor.CpuCounter>().Length);
        Assert.Equal(MmuCounters.Length, Enum.GetValues<MmuCounter>().Length);
        // Every counter has a reported name (the name tables cover the enums).
        Assert.All(Enum.GetValues<MmuCounter>(), c => Assert.NotEmpty(MmuCounters.ReportedName(c)));
        Assert.All(Enum.GetValues<Processor.CpuCounter>(), c => Processor.CpuCounters.ReportedName(c));
    }
}
