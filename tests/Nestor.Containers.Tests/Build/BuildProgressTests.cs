using System.Text;
using Nestor.Containers.Build;

namespace Nestor.Containers.Tests.Build;

/// <summary>The two progress forms: podman's plain lines, and the terminal's one bold line per step with the
/// command's output indented and each result's time.</summary>
public sealed class BuildProgressTests
{
    private const string Id = "sha256:0c37211905e0aa2b63dfb38d1cbd0d24a2d5ad4edfa1b87f1db7b9bd6f2b9d0e";

    [Fact]
    public void PlainLinesAreThoseOfPodman()
    {
        var text = new StringWriter();
        using var raw = new MemoryStream();
        var progress = new PlainBuildProgress(text, raw);
        progress.Step(2, 5, "RUN make");
        progress.Output("compiling\n"u8, isError: false);
        progress.Produced(Id, TimeSpan.FromSeconds(1));
        progress.Step(3, 5, "COPY . /app");
        progress.Cached(Id);
        Assert.Equal("STEP 2/5: RUN make\n--> 0c37211905e\nSTEP 3/5: COPY . /app\n--> CACHED\n--> 0c37211905e\n", text.ToString().Replace("\r\n", "\n"));
        Assert.Equal("compiling\n", Encoding.UTF8.GetString(raw.ToArray()));
    }

    [Fact]
    public void TerminalFormIndentsOutputAndTimesEachStep()
    {
        var text = new StringWriter();
        var progress = new TerminalBuildProgress(text);
        progress.Step(1, 2, "RUN make");
        progress.Output("line one\nline t"u8, isError: false);
        progress.Output("wo"u8, isError: true);
        progress.Produced(Id, TimeSpan.FromSeconds(1.5));
        progress.Step(2, 2, "CMD [\"sh\"]");
        progress.Cached(Id);
        string[] lines = text.ToString().Replace("\r\n", "\n").Split('\n');
        Assert.Equal("\u001b[1m[1/2] RUN make\u001b[0m", lines[0]);
        Assert.Equal("\u001b[2m  | line one\u001b[0m", lines[1]);
        Assert.Equal("\u001b[2m  | line two\u001b[0m", lines[2]); // a line split across two frames stays one line
        Assert.Equal("  \u001b[32mDONE\u001b[0m 0c37211905e 1.5s", lines[3]);
        Assert.Equal("\u001b[1m[2/2] CMD [\"sh\"]\u001b[0m", lines[4]);
        Assert.Equal("  \u001b[32mCACHED\u001b[0m 0c37211905e", lines[5]);
    }
}
