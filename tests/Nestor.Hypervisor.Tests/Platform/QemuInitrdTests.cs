using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Reference;

namespace Nestor.Hypervisor.Tests.Platform;

/// <summary><c>nestor run --qemu --module</c>: the modules become QEMU's <c>-initrd</c> in the form QEMU 7.2's
/// Multiboot loader splits (commas between modules, doubled inside one; the file up to the first space).</summary>
public class QemuInitrdTests
{
    [Fact]
    public void Modules_are_joined_by_commas_with_their_command_lines_after_a_space_and_inner_commas_doubled()
    {
        string argument = QemuReferenceMachine.InitrdArgument([new("/tmp/env"), new("/tmp/one", "a=1,b"), new("/tmp/x,y", "c")]);
        Assert.Equal("/tmp/env,/tmp/one a=1,,b,/tmp/x,,y c", argument);
    }

    [Fact]
    public void A_module_path_with_a_space_is_refused_with_advice()
    {
        var e = Assert.Throws<BadInputException>(() => QemuReferenceMachine.InitrdArgument([new("/tmp/my env")]));
        Assert.Contains("'/tmp/my env'", e.Message);
        Assert.NotNull(e.Advice);
    }
}
