namespace Nestor.Containers.Tests.Engine;

/// <summary><c>nestor container run</c> in the foreground: output, exit statuses, <c>--rm</c>.</summary>
public sealed class ContainerRunTests(EngineFixture engine) : IClassFixture<EngineFixture>
{
    /// <summary>The container's stdout and stderr reach the caller's, and its exit status is the command's.</summary>
    [Fact]
    public void ForegroundRunRelaysOutputAndExitStatus()
    {
        var result = engine.Container("run", "--runtime", "runc", EngineFixture.ImageName, "sh", "-c", "echo out; echo err >&2; exit 7");
        Assert.True(result.Status == 7, result.ToString());
        Assert.Equal("out\n", result.Output);
        Assert.Contains("err", result.Error);
    }
}
