using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Tests;

/// <summary>The one home of the technique and memory-virtualization rules, and its users: <see cref="SimOptions"/>, the
/// engine and the VMM.</summary>
public class TechniqueRulesTests
{
    [Theory]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Nested, true)]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Shadow, true)]
    [InlineData(Technique.TrapAndEmulate, MemoryVirtualization.Shadow, true)]
    [InlineData(Technique.TrapAndEmulate, MemoryVirtualization.Nested, false)]
    [InlineData(Technique.BinaryTranslation, MemoryVirtualization.Shadow, true)]
    [InlineData(Technique.BinaryTranslation, MemoryVirtualization.Nested, false)]
    [InlineData(Technique.Paravirtual, MemoryVirtualization.Shadow, true)]
    [InlineData(Technique.Paravirtual, MemoryVirtualization.Nested, false)]
    [InlineData(Technique.Native, MemoryVirtualization.Shadow, false)]
    [InlineData(Technique.Native, MemoryVirtualization.Nested, false)]
    public void Only_hardware_assist_may_use_nested_paging_and_native_has_no_memory_virtualization(Technique technique,
        MemoryVirtualization memory, bool allowed)
    {
        Assert.Equal(allowed, TechniqueRules.Allows(technique, memory));
        Assert.Equal(allowed, TechniqueRules.Check(new TechniqueChoice(technique, memory)) is null);
    }

    [Theory]
    [InlineData(Technique.Native, null)]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Nested)]
    [InlineData(Technique.TrapAndEmulate, MemoryVirtualization.Shadow)]
    [InlineData(Technique.BinaryTranslation, MemoryVirtualization.Shadow)]
    [InlineData(Technique.Paravirtual, MemoryVirtualization.Shadow)]
    public void Each_technique_has_a_default_memory_virtualization(Technique technique, MemoryVirtualization? memory)
    {
        Assert.Equal(memory, TechniqueRules.DefaultMemory(technique));
        Assert.Equal(memory, new SimOptions { Technique = technique }.EffectiveMemory);
        Assert.Null(TechniqueRules.Check(new TechniqueChoice(technique)));
    }

    [Theory]
    [InlineData(Technique.Native, null, true, false, "native has no VMM")]
    [InlineData(Technique.Native, null, false, true, "native has no VMM")]
    [InlineData(Technique.Native, MemoryVirtualization.Nested, false, false, "native has no VMM")]
    [InlineData(Technique.TrapAndEmulate, MemoryVirtualization.Nested, false, false, "nested paging is a hardware feature")]
    [InlineData(Technique.Paravirtual, MemoryVirtualization.Nested, false, false, "--technique pv")]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Shadow, true, false, "shadow paging has none")]
    [InlineData(Technique.BinaryTranslation, null, true, false, "shadow paging has none")]
    [InlineData(Technique.HardwareAssist, null, false, true, "nested paging keeps none")]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Nested, false, true, "nested paging keeps none")]
    public void A_refused_choice_says_which_rule_it_breaks(Technique technique, MemoryVirtualization? memory, bool nestedPageSize,
        bool verify, string reason)
    {
        var violation = TechniqueRules.Check(new TechniqueChoice(technique, memory, nestedPageSize, verify));
        Assert.NotNull(violation);
        Assert.Contains(reason, violation.Message);
        Assert.NotEmpty(violation.Hint);
        var options = new SimOptions { Technique = technique, Memory = memory, LargeNestedPages = nestedPageSize, VerifyShadowPaging = verify };
        Assert.Contains(reason, Assert.Throws<ArgumentException>(() => options.Validate()).Message);
        Assert.Contains(reason, Assert.Throws<ArgumentException>(() => new SimEngine(options)).Message);
    }

    [Theory]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Nested, true, false)]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Shadow, false, true)]
    [InlineData(Technique.TrapAndEmulate, null, false, true)]
    [InlineData(Technique.BinaryTranslation, MemoryVirtualization.Shadow, false, true)]
    public void An_allowed_choice_validates(Technique technique, MemoryVirtualization? memory, bool largeNestedPages, bool verify)
    {
        var options = new SimOptions { Technique = technique, Memory = memory, LargeNestedPages = largeNestedPages, VerifyShadowPaging = verify };
        Assert.Same(options, options.Validate());
        using var engine = new SimEngine(options);
        Assert.Equal(options, engine.Options);
    }

    [Fact]
    public void The_vmm_refuses_nested_paging_under_a_software_technique()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Nested);
        var nested = bench.Monitor.Memory;
        var error = Assert.Throws<ArgumentException>(() => Nestor.Hypervisor.Techniques.VirtualizationTechnique.Create(
            Technique.TrapAndEmulate, bench.Vm, bench.Monitor.Vmcs, nested, bench.Map));
        Assert.Contains("nested paging is a hardware feature", error.Message);
    }
}
