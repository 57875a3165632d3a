using Nestor.Containers.Build.Dockerfiles;

namespace Nestor.Containers.Tests.Build.Dockerfiles;

public class DockerfileParserTests
{
    private static Dockerfile Parse(string text) => DockerfileParser.Parse(text, "Dockerfile");

    private static Instruction Only(string text) => Assert.Single(Parse(text).FinalStage.Instructions);

    /// <summary>The course's four-line Dockerfile parses into one stage with its instructions in order.</summary>
    [Fact]
    public void CourseExample()
    {
        var file = Parse("""
            FROM ubuntu:18.04
            COPY . /app
            RUN make -C /app
            CMD python /app/app.py
            """);
        var stage = Assert.Single(file.Stages);
        Assert.Equal("ubuntu:18.04", stage.BaseImage);
        Assert.Null(stage.Name);
        Assert.Collection(stage.Instructions,
            i => Assert.Equal(["."], Assert.IsType<CopyInstruction>(i).Sources),
            i => Assert.Equal("make -C /app", Assert.IsType<RunInstruction>(i).Command.ShellText),
            i => Assert.Equal("python /app/app.py", Assert.IsType<CmdInstruction>(i).Command.ShellText));
        Assert.Equal(2, stage.Instructions[0].Location.Line);
        Assert.Equal("/app", ((CopyInstruction)stage.Instructions[0]).Destination);
    }

    /// <summary>Instruction keywords are case-insensitive.</summary>
    [Fact]
    public void KeywordsAreCaseInsensitive()
    {
        var file = Parse("from alpine\nrUn echo hi\nWorkDir /x");
        Assert.Equal("alpine", file.FinalStage.BaseImage);
        Assert.IsType<RunInstruction>(file.FinalStage.Instructions[0]);
        Assert.Equal("/x", Assert.IsType<WorkdirInstruction>(file.FinalStage.Instructions[1]).Path);
    }

    /// <summary>A continuation joins lines without the escape; comment and empty lines inside it are skipped;
    /// continuation lines keep their leading white space; the line number is the first line's.</summary>
    [Fact]
    public void LineContinuations()
    {
        var file = Parse("FROM a\nRUN apt-get update && \\\n# a comment\n\n    apt-get install -y x \\  \n  && echo done\nUSER me");
        var run = Assert.IsType<RunInstruction>(file.FinalStage.Instructions[0]);
        Assert.Equal("apt-get update &&     apt-get install -y x   && echo done", run.Command.ShellText);
        Assert.Equal(2, run.Location.Line);
        Assert.Equal(7, file.FinalStage.Instructions[1].Location.Line);
    }

    /// <summary>Comments are whole lines starting with #; a # later in a line is text.</summary>
    [Fact]
    public void CommentsAreWholeLines()
    {
        var run = Assert.IsType<RunInstruction>(Only("FROM a\n  # indented comment\nRUN echo hello # not a comment"));
        Assert.Equal("echo hello # not a comment", run.Command.ShellText);
    }

    /// <summary><c># escape=`</c> makes the backtick the escape: a trailing backslash is then text (the reference's
    /// Windows example), and a trailing backtick continues the line.</summary>
    [Fact]
    public void EscapeDirective()
    {
        var file = Parse("# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\nRUN a `\n  b");
        Assert.Equal('`', file.EscapeCharacter);
        var copy = Assert.IsType<CopyInstruction>(file.FinalStage.Instructions[0]);
        Assert.Equal("c:\\", copy.Destination);
        Assert.Equal("dir c:\\", Assert.IsType<RunInstruction>(file.FinalStage.Instructions[1]).Command.ShellText);
        Assert.Equal("a   b", Assert.IsType<RunInstruction>(file.FinalStage.Instructions[2]).Command.ShellText);
    }

    /// <summary>Without the directive, the same trailing backslash continues the line into the next instruction.</summary>
    [Fact]
    public void BackslashIsTheDefaultEscape()
    {
        var file = Parse("FROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\");
        var copy = Assert.IsType<CopyInstruction>(Assert.Single(file.FinalStage.Instructions));
        Assert.Equal(["testfile.txt", "c:RUN", "dir"], copy.Sources);
    }

    /// <summary>Directives are read only at the very top, are case-insensitive and tolerate white space; after an
    /// empty line, an ordinary comment, an unknown directive or an instruction they are comments.</summary>
    [Theory]
    [InlineData("# escape=`\nFROM a", '`')]
    [InlineData("#ESCAPE = `\nFROM a", '`')]
    [InlineData("#\tescape=`  \nFROM a", '`')]
    [InlineData("\n# escape=`\nFROM a", '\\')]
    [InlineData("# a comment\n# escape=`\nFROM a", '\\')]
    [InlineData("# unknowndirective=value\n# escape=`\nFROM a", '\\')]
    [InlineData("FROM a\n# escape=`", '\\')]
    [InlineData("# direc \\\n# escape=`\nFROM a", '\\')]
    public void DirectivesOnlyAtTheTop(string text, char escape)
    {
        Assert.Equal(escape, Parse(text).EscapeCharacter);
    }

    /// <summary>The syntax directive is recorded; a directive given twice is an error.</summary>
    [Fact]
    public void SyntaxDirectiveAndDuplicates()
    {
        var file = Parse("# syntax=docker/dockerfile:1\n# check=skip=all\nFROM a");
        Assert.Equal("docker/dockerfile:1", file.Syntax);
        Assert.Equal(["syntax", "check"], file.Directives.Select(d => d.Name));
        var error = Assert.Throws<DockerfileException>(() => Parse("# escape=`\n# escape=\\\nFROM a"));
        Assert.Equal(2, error.Location.Line);
        var bad = Assert.Throws<DockerfileException>(() => Parse("# escape=x\nFROM a"));
        Assert.Contains("escape", bad.Message);
    }

    /// <summary>RUN, CMD and ENTRYPOINT take a JSON array (exec form) or a string (shell form); text that is not
    /// a valid JSON array of strings is shell form, as Docker does.</summary>
    [Theory]
    [InlineData("[\"echo\", \"hi\"]", true, new[] { "echo", "hi" })]
    [InlineData("[ \"/bin/sh\" , \"-c\", \"a \\\"b\\\"\" ]", true, new[] { "/bin/sh", "-c", "a \"b\"" })]
    [InlineData("[]", true, new string[0])]
    [InlineData("[ 'echo', 'hi' ]", false, new[] { "[ 'echo', 'hi' ]" })]
    [InlineData("[\"echo\", 1]", false, new[] { "[\"echo\", 1]" })]
    [InlineData("[\"a\"] extra", false, new[] { "[\"a\"] extra" })]
    [InlineData("echo [\"a\"]", false, new[] { "echo [\"a\"]" })]
    public void ExecAndShellForms(string arguments, bool exec, string[] expected)
    {
        foreach (string keyword in new[] { "RUN", "CMD", "ENTRYPOINT" })
        {
            var instruction = Only($"FROM a\n{keyword} {arguments}");
            var command = instruction switch
            {
                RunInstruction r => r.Command,
                CmdInstruction c => c.Command,
                EntrypointInstruction e => e.Command,
                _ => throw new InvalidOperationException(),
            };
            Assert.Equal(exec, command.IsExecForm);
            Assert.Equal(expected, exec ? command.ExecArguments : [command.ShellText]);
        }
    }

    /// <summary>A shell-form command runs in the stage's shell; exec form runs as is.</summary>
    [Fact]
    public void CommandArguments()
    {
        IReadOnlyList<string> shell = ["/bin/sh", "-c"];
        Assert.Equal(["/bin/sh", "-c", "echo $HOME"], CommandLine.Shell("echo $HOME").ToArguments(shell));
        Assert.Equal(["echo", "$HOME"], CommandLine.Exec(["echo", "$HOME"]).ToArguments(shell));
    }

    /// <summary>RUN keeps its --mount, --network and --security flags.</summary>
    [Fact]
    public void RunFlags()
    {
        var run = Assert.IsType<RunInstruction>(Only(
            "FROM a\nRUN --mount=type=cache,target=/root/.cache --network=none --mount=type=tmpfs,target=/t go build"));
        Assert.Equal(["type=cache,target=/root/.cache", "type=tmpfs,target=/t"], run.Mounts);
        Assert.Equal("none", run.Network);
        Assert.Null(run.Security);
        Assert.Equal("go build", run.Command.ShellText);
    }

    /// <summary>COPY and ADD keep sources, destination and flags; the JSON form allows spaces in paths.</summary>
    [Fact]
    public void CopyAndAdd()
    {
        var copy = Assert.IsType<CopyInstruction>(Only(
            "FROM a\nCOPY --from=builder --chown=55:mygroup --chmod=644 --link files* other /mydir/"));
        Assert.False(copy.IsAdd);
        Assert.Equal("builder", copy.From);
        Assert.Equal("55:mygroup", copy.Chown);
        Assert.Equal("644", copy.Chmod);
        Assert.True(copy.Link);
        Assert.Equal(["files*", "other"], copy.Sources);
        Assert.Equal("/mydir/", copy.Destination);
        Assert.True(copy.DestinationIsDirectory);

        var add = Assert.IsType<CopyInstruction>(Only("FROM a\nADD [\"with space.txt\", \"/dest dir/\"]"));
        Assert.True(add.IsAdd);
        Assert.True(add.IsJsonForm);
        Assert.Equal(["with space.txt"], add.Sources);
        Assert.Equal("/dest dir/", add.Destination);
        Assert.Null(add.From);
        Assert.False(add.Link);

        var checksum = Assert.IsType<CopyInstruction>(Only("FROM a\nADD --checksum=sha256:abc https://x/y.tar /"));
        Assert.Equal("sha256:abc", checksum.Checksum);
    }

    /// <summary>ENV takes NAME=VALUE pairs (quotes and escapes kept until expansion) and the legacy NAME VALUE.</summary>
    [Fact]
    public void EnvForms()
    {
        var env = Assert.IsType<EnvInstruction>(Only("FROM a\nENV MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog MY_CAT=fluffy"));
        Assert.Equal(["MY_NAME", "MY_DOG", "MY_CAT"], env.Pairs.Select(p => p.Name));
        Assert.Equal("\"John Doe\"", env.Pairs[0].Value);
        Assert.Equal("Rex\\ The\\ Dog", env.Pairs[1].Value);

        var legacy = Assert.IsType<EnvInstruction>(Only("FROM a\nENV MY_VAR my value  here"));
        Assert.Equal(new NameValuePair("MY_VAR", "my value  here"), Assert.Single(legacy.Pairs));

        var expanded = (EnvInstruction)env.Expand(ShellWordExpansion.Empty());
        Assert.Equal(["John Doe", "Rex The Dog", "fluffy"], expanded.Pairs.Select(p => p.Value));
    }

    /// <summary>LABEL takes pairs like ENV; a quoted value may hold spaces and continuation lines.</summary>
    [Fact]
    public void Labels()
    {
        var label = Assert.IsType<LabelInstruction>(Only(
            "FROM a\nLABEL \"com.example.vendor\"=\"ACME Incorporated\" version=1.0 description=\"This text illustrates \\\nthat label-values can span multiple lines.\""));
        var expanded = (LabelInstruction)label.Expand(ShellWordExpansion.Empty());
        Assert.Equal(
            [
                new NameValuePair("com.example.vendor", "ACME Incorporated"),
                new NameValuePair("version", "1.0"),
                new NameValuePair("description", "This text illustrates that label-values can span multiple lines."),
            ],
            expanded.Pairs);
    }

    /// <summary>ARG declares one or more names, with or without defaults.</summary>
    [Fact]
    public void Args()
    {
        var arg = Assert.IsType<ArgInstruction>(Only("FROM a\nARG user1=someuser buildno"));
        Assert.Equal([new ArgDeclaration("user1", "someuser"), new ArgDeclaration("buildno", null)], arg.Declarations);
        Assert.Equal("user1", arg.Name);
    }

    /// <summary>The single-string instructions keep their argument whole.</summary>
    [Fact]
    public void SingleStringInstructions()
    {
        var file = Parse("FROM a\nWORKDIR /path/to/workdir\nUSER patrick:staff\nSTOPSIGNAL SIGKILL\nMAINTAINER Jo <jo@example.com>");
        Assert.Equal("/path/to/workdir", ((WorkdirInstruction)file.FinalStage.Instructions[0]).Path);
        Assert.Equal("patrick:staff", ((UserInstruction)file.FinalStage.Instructions[1]).User);
        Assert.Equal("SIGKILL", ((StopSignalInstruction)file.FinalStage.Instructions[2]).Signal);
        Assert.Equal("Jo <jo@example.com>", ((MaintainerInstruction)file.FinalStage.Instructions[3]).Name);
    }

    /// <summary>EXPOSE gives one OCI ExposedPorts key per port; tcp is the default protocol; ranges expand.</summary>
    [Fact]
    public void Expose()
    {
        var expose = Assert.IsType<ExposeInstruction>(Only("FROM a\nEXPOSE 80/tcp 53/udp 8080 9000-9002/SCTP"));
        Assert.Equal(["80/tcp", "53/udp", "8080/tcp", "9000/sctp", "9001/sctp", "9002/sctp"],
            expose.ParsePorts().Select(p => p.ToString()));
    }

    /// <summary>EXPOSE refuses ports outside 1-65535, non-numbers, unknown protocols and backward ranges, at the
    /// instruction's line.</summary>
    [Theory]
    [InlineData("0")]
    [InlineData("65536")]
    [InlineData("http")]
    [InlineData("80/tcpx")]
    [InlineData("90-80")]
    [InlineData("-5")]
    public void ExposeRefuses(string port)
    {
        var expose = Assert.IsType<ExposeInstruction>(Only($"FROM a\n\nEXPOSE {port}"));
        var error = Assert.Throws<DockerfileException>(() => expose.ParsePorts());
        Assert.Equal(3, error.Location.Line);
        Assert.Contains(port, error.Message);
    }

    /// <summary>VOLUME takes a JSON array or white-space separated paths.</summary>
    [Fact]
    public void Volumes()
    {
        var file = Parse("FROM a\nVOLUME [\"/data\", \"/var/log\"]\nVOLUME /a /b");
        var json = (VolumeInstruction)file.FinalStage.Instructions[0];
        Assert.True(json.IsJsonForm);
        Assert.Equal(["/data", "/var/log"], json.Paths);
        Assert.Equal(["/a", "/b"], ((VolumeInstruction)file.FinalStage.Instructions[1]).Paths);
    }

    /// <summary>SHELL must be a JSON array.</summary>
    [Fact]
    public void Shell()
    {
        var shell = Assert.IsType<ShellInstruction>(Only("FROM a\nSHELL [\"powershell\", \"-command\"]"));
        Assert.Equal(["powershell", "-command"], shell.Shell);
        var error = Assert.Throws<DockerfileException>(() => Parse("FROM a\nSHELL /bin/bash -c"));
        Assert.Equal(2, error.Location.Line);
        Assert.Contains("JSON", error.Message);
    }

    /// <summary>HEALTHCHECK: NONE, or CMD with Go-style durations and retries, stored as the config's Test.</summary>
    [Fact]
    public void Healthcheck()
    {
        var check = Assert.IsType<HealthcheckInstruction>(Only(
            "FROM a\nHEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms --retries=4 \\\n  CMD curl -f http://localhost/ || exit 1"));
        Assert.Equal(TimeSpan.FromMinutes(5), check.Interval);
        Assert.Equal(TimeSpan.FromSeconds(3), check.Timeout);
        Assert.Equal(TimeSpan.FromSeconds(90), check.StartPeriod);
        Assert.Equal(TimeSpan.FromMilliseconds(500), check.StartInterval);
        Assert.Equal(4, check.Retries);
        Assert.Equal(["CMD-SHELL", "curl -f http://localhost/ || exit 1"], check.Test);

        var exec = Assert.IsType<HealthcheckInstruction>(Only("FROM a\nhealthcheck cmd [\"/bin/check\", \"-q\"]"));
        Assert.Equal(["CMD", "/bin/check", "-q"], exec.Test);
        Assert.Null(exec.Interval);

        var none = Assert.IsType<HealthcheckInstruction>(Only("FROM a\nHEALTHCHECK NONE"));
        Assert.True(none.IsNone);
        Assert.Equal(["NONE"], none.Test);
    }

    /// <summary>HEALTHCHECK errors: an unknown type, NONE with arguments, a bad duration, negative retries.</summary>
    [Theory]
    [InlineData("HEALTHCHECK RUN true", "unknown type")]
    [InlineData("HEALTHCHECK NONE true", "NONE")]
    [InlineData("HEALTHCHECK --interval=5 CMD true", "duration")]
    [InlineData("HEALTHCHECK --timeout=1ns CMD true", "1ms")]
    [InlineData("HEALTHCHECK --retries=-1 CMD true", "retries")]
    [InlineData("HEALTHCHECK CMD", "command")]
    public void HealthcheckErrors(string line, string reason)
    {
        var error = Assert.Throws<DockerfileException>(() => Parse("FROM a\n" + line));
        Assert.Equal(2, error.Location.Line);
        Assert.Contains(reason, error.Message);
    }

    /// <summary>ONBUILD keeps its parsed trigger; ONBUILD ONBUILD, FROM and MAINTAINER are refused.</summary>
    [Fact]
    public void Onbuild()
    {
        var onbuild = Assert.IsType<OnbuildInstruction>(Only("FROM a\nONBUILD ADD . /app/src"));
        var trigger = Assert.IsType<CopyInstruction>(onbuild.Trigger);
        Assert.True(trigger.IsAdd);
        Assert.Equal("ADD . /app/src", onbuild.TriggerText);
        foreach (string bad in new[] { "ONBUILD", "FROM", "MAINTAINER" })
        {
            var error = Assert.Throws<DockerfileException>(() => Parse($"FROM a\nONBUILD {bad} x"));
            Assert.Equal(2, error.Location.Line);
        }
    }

    /// <summary>Stages: AS names (lower-cased), FROM scratch, --platform, and global ARGs before the first FROM.</summary>
    [Fact]
    public void Stages()
    {
        var file = Parse("""
            ARG GO_VERSION=1.22
            ARG BASE
            FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS Build
            RUN go build -o /out/app .
            FROM scratch
            COPY --from=build /out/app /app
            ENTRYPOINT ["/app"]
            """);
        Assert.Equal(["GO_VERSION", "BASE"], file.GlobalArgs.Select(a => a.Name));
        Assert.Equal(2, file.Stages.Count);
        Assert.Equal("build", file.Stages[0].Name);
        Assert.Equal("golang:${GO_VERSION}", file.Stages[0].BaseImage);
        Assert.Equal("$BUILDPLATFORM", file.Stages[0].Platform);
        Assert.Equal(3, file.Stages[0].Location.Line);
        Assert.True(file.Stages[1].From.IsScratch);
        Assert.Equal(1, file.Stages[1].Index);
        Assert.Same(file.Stages[0], file.FindStage("BUILD"));
        Assert.Same(file.Stages[1], file.FindStage("1"));
        Assert.Null(file.FindStage("2"));
    }

    /// <summary>RUN heredocs: the body is the script; it is not subject to comment stripping or continuations.</summary>
    [Fact]
    public void RunHeredocScript()
    {
        var file = Parse("FROM debian\nRUN <<EOF\napt-get update\n# kept \\\napt-get install -y vim\nEOF\nUSER x");
        var run = Assert.IsType<RunInstruction>(file.FinalStage.Instructions[0]);
        var heredoc = Assert.Single(run.Heredocs);
        Assert.Equal("EOF", heredoc.Name);
        Assert.Equal("apt-get update\n# kept \\\napt-get install -y vim\n", heredoc.Content);
        Assert.True(heredoc.Expand);
        Assert.True(run.IsHeredocScript);
        Assert.Equal(7, file.FinalStage.Instructions[1].Location.Line);
    }

    /// <summary>Several heredocs on one line take their bodies in order; the shell script carries them all.</summary>
    [Fact]
    public void SeveralHeredocs()
    {
        var run = Assert.IsType<RunInstruction>(Only(
            "FROM a\nRUN <<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2"));
        Assert.Equal(["FILE1", "FILE2"], run.Heredocs.Select(h => h.Name));
        Assert.Equal("I am\nfirst\n", run.Heredocs[0].Content);
        Assert.Equal("I am\nsecond\n", run.Heredocs[1].Content);
        Assert.False(run.IsHeredocScript);
        Assert.Equal("<<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2\n",
            run.ShellTextWithHeredocs);
    }

    /// <summary><c>&lt;&lt;-</c> strips leading tabs from the body and the delimiter line; a quoted delimiter turns
    /// expansion off; a file descriptor before the operator is kept.</summary>
    [Fact]
    public void HeredocVariants()
    {
        var tabs = Assert.IsType<RunInstruction>(Only("FROM a\nRUN python3 <<-'EOT'\n\t\tprint(\"$HOME\")\n\tEOT"));
        var heredoc = Assert.Single(tabs.Heredocs);
        Assert.True(heredoc.StripLeadingTabs);
        Assert.False(heredoc.Expand);
        Assert.Equal("print(\"$HOME\")\n", heredoc.Content);

        var descriptor = Assert.IsType<RunInstruction>(Only("FROM a\nRUN cat 3<<\"EOF\" /dev/fd/3\nx\nEOF"));
        Assert.Equal(3, Assert.Single(descriptor.Heredocs).FileDescriptor);

        var exec = Assert.IsType<RunInstruction>(Only("FROM a\nRUN [\"echo\", \"<<EOF\"]"));
        Assert.Empty(exec.Heredocs);
        var quoted = Assert.IsType<RunInstruction>(Only("FROM a\nRUN echo \"<<EOF\""));
        Assert.Empty(quoted.Heredocs);
    }

    /// <summary>COPY with a heredoc source makes a file from the body.</summary>
    [Fact]
    public void CopyHeredoc()
    {
        var copy = Assert.IsType<CopyInstruction>(Only(
            "FROM nginx\nCOPY --chmod=644 <<EOF /usr/share/nginx/html/index.html\n(your index page goes here)\nEOF"));
        Assert.Empty(copy.Sources);
        Assert.Equal("/usr/share/nginx/html/index.html", copy.Destination);
        Assert.Equal("(your index page goes here)\n", Assert.Single(copy.Heredocs).Content);
        Assert.Equal("644", copy.Chmod);
    }

    /// <summary>A heredoc without its closing line is an error at the instruction's line.</summary>
    [Fact]
    public void UnterminatedHeredoc()
    {
        var error = Assert.Throws<DockerfileException>(() => Parse("FROM a\n\nRUN <<EOF\necho\nEO"));
        Assert.Equal(3, error.Location.Line);
        Assert.Contains("EOF", error.Message);
    }

    /// <summary>Every structural and syntax error names its line.</summary>
    [Theory]
    [InlineData("FROM a\n\nFOO bar", 3, "unknown instruction 'FOO'")]
    [InlineData("FROM a\nRUN apt \\\n  install\nCOPPY a b", 4, "unknown instruction 'COPPY'")]
    [InlineData("FROM a\nRUN", 2, "RUN needs arguments")]
    [InlineData("FROM a\nWORKDIR   ", 2, "WORKDIR needs arguments")]
    [InlineData("FROM a\nCOPY --frm=x a b", 2, "--frm")]
    [InlineData("FROM a\nENV --x=1 a=b", 2, "--x")]
    [InlineData("FROM a\nCOPY onlyone", 2, "source and a destination")]
    [InlineData("FROM a\nCOPY <<EOF\nbody\nEOF", 2, "source and a destination")]
    [InlineData("FROM a\nCOPY a <<EOF\nbody\nEOF", 2, "last argument is a heredoc")]
    [InlineData("RUN echo\nFROM a", 1, "before the first FROM")]
    [InlineData("ARG X\nENV A=b\nFROM a", 2, "before the first FROM")]
    [InlineData("FROM a AS x\nRUN y\nFROM b AS X", 3, "duplicate stage name")]
    [InlineData("FROM a AS one\nCOPY --from=two /a /b\nFROM b AS two", 2, "later stage")]
    [InlineData("FROM a AS one\nCOPY --from=1 /a /b\nFROM b", 2, "later stage")]
    [InlineData("FROM a AS one\nCOPY --from=one /a /b", 2, "stage it is in")]
    [InlineData("FROM a AS one\nRUN --mount=type=bind,from=two,target=/x true\nFROM b AS two", 2, "later stage")]
    [InlineData("FROM a b", 1, "AS NAME")]
    [InlineData("FROM a AS 1st", 1, "invalid stage name")]
    [InlineData("FROM a\nENV a=b c", 2, "'c' has no '='")]
    [InlineData("FROM a\nENV onlyname", 2, "no value")]
    [InlineData("FROM a\nARG 9lives", 2, "not a variable name")]
    [InlineData("FROM a\nSTOPSIGNAL SIGNOPE", 2, "not a signal")]
    [InlineData("FROM a\nVOLUME [\"\"]", 2, "empty path")]
    [InlineData("", 1, "no instructions")]
    [InlineData("ARG A", 1, "no FROM")]
    public void ErrorsNameTheLine(string text, int line, string reason)
    {
        var error = Assert.Throws<DockerfileException>(() => Parse(text));
        Assert.Equal(line, error.Location.Line);
        Assert.Equal("Dockerfile", error.Location.File);
        Assert.Contains(reason, error.Message);
        Assert.StartsWith($"Dockerfile:{line}", error.Message);
        Assert.False(string.IsNullOrEmpty(error.Advice));
    }

    /// <summary>An unknown instruction close to a real one gets a suggestion.</summary>
    [Fact]
    public void UnknownInstructionSuggestion()
    {
        var error = Assert.Throws<DockerfileException>(() => Parse("FROM a\nCOPPY a b"));
        Assert.Contains("COPY", error.Advice);
        Assert.Equal(1, error.Location.Column);
    }

    /// <summary>Windows line ends and a byte-order mark are accepted.</summary>
    [Fact]
    public void CarriageReturnsAndByteOrderMark()
    {
        var file = Parse("\uFEFF# escape=`\r\nFROM a\r\nRUN a `\r\n b\r\n");
        Assert.Equal('`', file.EscapeCharacter);
        Assert.Equal("a  b", ((RunInstruction)Assert.Single(file.FinalStage.Instructions)).Command.ShellText);
    }
}
