using Nestor.Containers.Build.Dockerfiles;

namespace Nestor.Containers.Tests.Build.Dockerfiles;

public class ShellWordExpansionTests
{
    private static readonly Dictionary<string, string> Variables = new()
    {
        ["FOO"] = "/bar",
        ["EMPTY"] = "",
        ["WORDS"] = "80  443",
        ["name"] = "world",
    };

    private static readonly ShellWordExpansion Expansion = new(n => Variables.GetValueOrDefault(n));

    /// <summary>Substitution and quoting as Docker's shell-word lexer does them (the reference's "Environment
    /// replacement" cases and the bash-like modifiers).</summary>
    [Theory]
    [InlineData("$FOO", "/bar")]
    [InlineData("${FOO}", "/bar")]
    [InlineData("${FOO}/baz", "/bar/baz")]
    [InlineData("$FOO/baz", "/bar/baz")]
    [InlineData("\\$FOO", "$FOO")]
    [InlineData("'$FOO'", "$FOO")]
    [InlineData("\"$FOO\"", "/bar")]
    [InlineData("\"\\$FOO\"", "$FOO")]
    [InlineData("\"a\\\"b\"", "a\"b")]
    [InlineData("\"a\\nb\"", "a\\nb")]
    [InlineData("'a\\nb'", "a\\nb")]
    [InlineData("a\\ b", "a b")]
    [InlineData("$UNSET", "")]
    [InlineData("x${UNSET}y", "xy")]
    [InlineData("${UNSET:-word}", "word")]
    [InlineData("${EMPTY:-word}", "word")]
    [InlineData("${FOO:-word}", "/bar")]
    [InlineData("${UNSET-word}", "word")]
    [InlineData("${EMPTY-word}", "")]
    [InlineData("${FOO:+word}", "word")]
    [InlineData("${EMPTY:+word}", "")]
    [InlineData("${UNSET:+word}", "")]
    [InlineData("${EMPTY+word}", "word")]
    [InlineData("${UNSET+word}", "")]
    [InlineData("${UNSET:-$FOO}", "/bar")]
    [InlineData("${UNSET:-${FOO}/x}", "/bar/x")]
    [InlineData("${UNSET:-\"a } b\"}", "a } b")]
    [InlineData("${UNSET:-a\\}b}", "a}b")]
    [InlineData("$", "$")]
    [InlineData("a$ b", "a$ b")]
    [InlineData("$-x", "$-x")]
    [InlineData("$1x", "x")]
    [InlineData("hello $name!", "hello world!")]
    [InlineData("$name_x", "")]
    [InlineData("trailing\\", "trailing")]
    public void ProcessWord(string word, string expected)
    {
        Assert.Equal(expected, Expansion.ProcessWord(word));
    }

    /// <summary>The backtick escape works the same way under <c># escape=`</c>, and a backslash is then text.</summary>
    [Fact]
    public void BacktickEscape()
    {
        var expansion = new ShellWordExpansion(n => Variables.GetValueOrDefault(n), '`');
        Assert.Equal("$FOO", expansion.ProcessWord("`$FOO"));
        Assert.Equal("c:\\/bar", expansion.ProcessWord("c:\\$FOO"));
    }

    /// <summary>Word splitting: unquoted white space, also from a variable's value, separates words; quoted and
    /// escaped white space does not; <c>""</c> is an empty word.</summary>
    [Theory]
    [InlineData("a b", new[] { "a", "b" })]
    [InlineData("  a   b  ", new[] { "a", "b" })]
    [InlineData("$WORDS 8080", new[] { "80", "443", "8080" })]
    [InlineData("\"$WORDS\"", new[] { "80  443" })]
    [InlineData("'a b' c\\ d", new[] { "a b", "c d" })]
    [InlineData("\"\" x", new[] { "", "x" })]
    [InlineData("$UNSET", new string[0])]
    public void ProcessWords(string text, string[] expected)
    {
        Assert.Equal(expected, Expansion.ProcessWords(text));
    }

    /// <summary>BuildKit's pattern removal, as POSIX's parameter expansion: <c>#</c>/<c>##</c> the shortest/longest
    /// matching prefix, <c>%</c>/<c>%%</c> the shortest/longest matching suffix; <c>*</c> spans <c>/</c>; the
    /// pattern expands variables, and a quoted or escaped wildcard is literal.</summary>
    [Theory]
    [InlineData("${P#*/}", "usr/local/bin/tool.tar.gz")]
    [InlineData("${P##*/}", "tool.tar.gz")]
    [InlineData("${P%.*}", "/usr/local/bin/tool.tar")]
    [InlineData("${P%%.*}", "/usr/local/bin/tool")]
    [InlineData("${P%/*}", "/usr/local/bin")]
    [InlineData("${P#/usr}", "/local/bin/tool.tar.gz")]
    [InlineData("${P#nomatch}", "/usr/local/bin/tool.tar.gz")]
    [InlineData("${P%%nomatch}", "/usr/local/bin/tool.tar.gz")]
    [InlineData("${P##*[/.]}", "gz")]
    [InlineData("${P%%[!/]*}", "/")]
    [InlineData("${P#/?sr}", "/local/bin/tool.tar.gz")]
    [InlineData("${P#$PREFIX}", "local/bin/tool.tar.gz")]
    [InlineData("${P%\"$SUFFIX\"}", "/usr/local/bin/tool.tar")]
    [InlineData("${UNSET#x}", "")]
    [InlineData("${STAR#*}", "*star")]
    [InlineData("${STAR##*}", "")]
    [InlineData("${STAR#\\*}", "star")]
    [InlineData("${STAR%r}", "*sta")]
    [InlineData("x${P##*/}y", "xtool.tar.gzy")]
    public void PatternRemoval(string word, string expected)
    {
        var variables = new Dictionary<string, string>
        {
            ["P"] = "/usr/local/bin/tool.tar.gz",
            ["PREFIX"] = "/usr/",
            ["SUFFIX"] = ".gz",
            ["STAR"] = "*star",
        };
        Assert.Equal(expected, new ShellWordExpansion(n => variables.GetValueOrDefault(n)).ProcessWord(word));
    }

    /// <summary>The reference's pattern substitution (stable since dockerfile 1.7.0): <c>/</c> replaces the first
    /// leftmost-longest match, <c>//</c> every one; the reference's own examples (foobarbaz) among them.</summary>
    [Theory]
    [InlineData("${S/ba/fo}", "fooforbaz")]
    [InlineData("${S//ba/fo}", "fooforfoz")]
    [InlineData("${S/nomatch/x}", "foobarbaz")]
    [InlineData("${S/b*a/X}", "fooXz")]
    [InlineData("${S//b?/X}", "fooXrXz")]
    [InlineData("${S/o/}", "fobarbaz")]
    [InlineData("${S//o/}", "fbarbaz")]
    [InlineData("${S//[ab]/-}", "foo--r--z")]
    [InlineData("${S//o/$R}", "f..barbaz")]
    [InlineData("${S//o/\"a b\"}", "fa ba bbarbaz")]
    [InlineData("${S///x}", "foobarbaz")]
    [InlineData("${P//\\//:}", ":usr:local")]
    [InlineData("${STAR/\\*/+}", "+star*")]
    [InlineData("${UNSET/a/b}", "")]
    [InlineData("x${S/foo/}y", "xbarbazy")]
    public void PatternSubstitution(string word, string expected)
    {
        var variables = new Dictionary<string, string>
        {
            ["S"] = "foobarbaz",
            ["R"] = ".",
            ["P"] = "/usr/local",
            ["STAR"] = "*star*",
        };
        Assert.Equal(expected, new ShellWordExpansion(n => variables.GetValueOrDefault(n)).ProcessWord(word));
    }

    /// <summary><c>${VAR:offset:length}</c> is bash's, not the reference's: refused, saying so; a substitution
    /// without its second slash is refused too.</summary>
    [Theory]
    [InlineData("${FOO:1:2}", "not in the Dockerfile reference")]
    [InlineData("${FOO/a}", "the second '/' is required")]
    public void UnsupportedSubstitutionsSaySo(string word, string expected)
    {
        var error = Assert.Throws<FormatException>(() => Expansion.ProcessWord(word));
        Assert.Contains(expected, error.Message);
    }

    /// <summary>The shell pattern matcher by itself: whole-string matches, classes with ranges and negation, an
    /// unclosed <c>[</c> as a literal.</summary>
    [Theory]
    [InlineData("a*c", "abbbc", true)]
    [InlineData("a*c", "abbbd", false)]
    [InlineData("*", "", true)]
    [InlineData("?", "", false)]
    [InlineData("[a-c]x", "bx", true)]
    [InlineData("[!a-c]x", "bx", false)]
    [InlineData("[]]", "]", true)]
    [InlineData("[ab", "[ab", true)]
    [InlineData("a/*", "a/b/c", true)]
    public void PatternMatches(string pattern, string text, bool expected)
    {
        Assert.Equal(expected, ShellWordExpansion.PatternMatches(pattern, text));
    }

    /// <summary>Malformed substitutions and unset required variables are errors.</summary>
    [Theory]
    [InlineData("${FOO")]
    [InlineData("${}")]
    [InlineData("${FOO^x}")]
    [InlineData("${UNSET:?need it}")]
    [InlineData("${EMPTY:?}")]
    [InlineData("'open")]
    [InlineData("\"open")]
    public void Malformed(string word)
    {
        Assert.Throws<FormatException>(() => Expansion.ProcessWord(word));
    }

    /// <summary><c>${VAR?msg}</c> only fails for an unset variable and says the message.</summary>
    [Fact]
    public void RequiredVariable()
    {
        Assert.Equal("", Expansion.ProcessWord("${EMPTY?x}"));
        var error = Assert.Throws<FormatException>(() => Expansion.ProcessWord("${UNSET?set UNSET please}"));
        Assert.Contains("set UNSET please", error.Message);
    }

    /// <summary>Heredoc bodies expand variables but keep quotes; the escape only escapes $ and itself.</summary>
    [Fact]
    public void Heredoc()
    {
        Assert.Equal("echo \"/bar\" '/bar' $FOO \\n\n", Expansion.ProcessHeredoc("echo \"$FOO\" '${FOO}' \\$FOO \\n\n"));
    }

    /// <summary>The instructions the reference lists expand; RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK do not.
    /// The reference's example: WORKDIR ${FOO} is /bar, ADD . $FOO adds to /bar, COPY \$FOO /quux copies $FOO.</summary>
    [Fact]
    public void WhichInstructionsExpand()
    {
        var file = DockerfileParser.Parse("""
            FROM busybox
            ENV FOO=/bar
            WORKDIR ${FOO}
            ADD . $FOO
            COPY \$FOO /quux
            RUN echo $FOO
            CMD ["echo", "$FOO"]
            ENTRYPOINT echo $FOO
            USER ${FOO:+admin}
            EXPOSE ${PORT:-80}/tcp
            LABEL where=$FOO
            VOLUME $FOO
            STOPSIGNAL ${SIG:-SIGTERM}
            SHELL ["/bin/sh", "$FOO"]
            HEALTHCHECK CMD test -d $FOO
            ONBUILD RUN echo $FOO
            """, "Dockerfile");
        var variables = new BuildVariables(file, new Dictionary<string, string>());
        var scope = variables.BeginStage(file.FinalStage, []);
        var expanded = file.FinalStage.Instructions.Select(scope.Apply).ToList();
        Assert.Equal("/bar", ((WorkdirInstruction)expanded[1]).Path);
        Assert.Equal("/bar", ((CopyInstruction)expanded[2]).Destination);
        Assert.Equal(["$FOO"], ((CopyInstruction)expanded[3]).Sources);
        Assert.Equal("echo $FOO", ((RunInstruction)expanded[4]).Command.ShellText);
        Assert.Equal(["echo", "$FOO"], ((CmdInstruction)expanded[5]).Command.ExecArguments);
        Assert.Equal("echo $FOO", ((EntrypointInstruction)expanded[6]).Command.ShellText);
        Assert.Equal("admin", ((UserInstruction)expanded[7]).User);
        Assert.Equal(["80/tcp"], ((ExposeInstruction)expanded[8]).ParsePorts().Select(p => p.ToString()));
        Assert.Equal("/bar", ((LabelInstruction)expanded[9]).Pairs[0].Value);
        Assert.Equal(["/bar"], ((VolumeInstruction)expanded[10]).Paths);
        Assert.Equal("SIGTERM", ((StopSignalInstruction)expanded[11]).Signal);
        Assert.Equal(["/bin/sh", "$FOO"], ((ShellInstruction)expanded[12]).Shell);
        Assert.Equal("test -d $FOO", ((HealthcheckInstruction)expanded[13]).Command!.ShellText);
        Assert.Equal("RUN echo $FOO", ((OnbuildInstruction)expanded[14]).TriggerText);
        Assert.All(expanded, i => Assert.True(i.IsExpanded));
    }

    /// <summary>ENV pairs on one line expand against the environment before the line (the reference's abc/def/ghi
    /// example: def is hello, ghi is bye).</summary>
    [Fact]
    public void EnvPairsSeeTheEnvironmentBeforeTheLine()
    {
        var file = DockerfileParser.Parse("FROM a\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc", "Dockerfile");
        var scope = new BuildVariables(file, new Dictionary<string, string>()).BeginStage(file.FinalStage, ["PATH=/bin"]);
        foreach (var instruction in file.FinalStage.Instructions)
        {
            scope.Apply(instruction);
        }
        Assert.Equal(["PATH=/bin", "abc=bye", "def=hello", "ghi=bye"], scope.Environment);
    }

    /// <summary>A malformed substitution is reported at the instruction's line.</summary>
    [Fact]
    public void ExpansionErrorNamesTheLine()
    {
        var file = DockerfileParser.Parse("FROM a\n\nWORKDIR ${DIR:?set DIR with --build-arg}", "Dockerfile");
        var scope = new BuildVariables(file, new Dictionary<string, string>()).BeginStage(file.FinalStage, []);
        var error = Assert.Throws<DockerfileException>(() => scope.Apply(file.FinalStage.Instructions[0]));
        Assert.Equal(3, error.Location.Line);
        Assert.Contains("set DIR with --build-arg", error.Message);
    }

    /// <summary>A COPY heredoc body expands with the stage's variables unless its delimiter was quoted.</summary>
    [Fact]
    public void CopyHeredocExpansion()
    {
        var file = DockerfileParser.Parse(
            "FROM a\nARG FOO=bar\nCOPY <<-EOT /script.sh\n\techo \"hello ${FOO}\"\nEOT\nCOPY <<-\"EOT\" /raw.sh\n\techo \"hello ${FOO}\"\nEOT",
            "Dockerfile");
        var scope = new BuildVariables(file, new Dictionary<string, string>()).BeginStage(file.FinalStage, []);
        var expanded = file.FinalStage.Instructions.Select(scope.Apply).ToList();
        Assert.Equal("echo \"hello bar\"\n", ((CopyInstruction)expanded[1]).Heredocs[0].Content);
        Assert.Equal("echo \"hello ${FOO}\"\n", ((CopyInstruction)expanded[2]).Heredocs[0].Content);
    }
}
