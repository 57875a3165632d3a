using Nestor.Containers.Build.Dockerfiles;

namespace Nestor.Containers.Tests.Build.Dockerfiles;

/// <summary>The values below are what <c>podman build</c> (podman 4.3.1, buildah 1.28.2, Debian's) put in the
/// image config for <see cref="Reference"/> (a FROM scratch file of metadata instructions exercising quoting,
/// escapes, continuations with comments, ARG scoping and same-line ENV expansion). Nestor's parser and expansion
/// must give the same.</summary>
public class PodmanReferenceTests
{
    private const string Reference = """
        ARG GLOBAL=g1
        FROM scratch
        ARG GLOBAL
        ARG UNSETARG
        ENV A=hello B="two words" C=Rex\ The\ Dog D='single $A' E="dq $A \$A \\ \"q\"" F=${UNSET:-def} G=${A:+alt} I=$GLOBAL
        ENV abc=hello
        ENV abc=bye def=$abc
        ENV LEGACY  legacy value  with  spaces
        ENV CONT="one \
        # comment inside
            two"
        LABEL "com.example.vendor"="ACME Inc" version=1.0 multi="a \
        b" k=$A
        EXPOSE 80/tcp 53/udp 8080
        WORKDIR /w/$A
        WORKDIR sub
        USER ${A}:staff
        STOPSIGNAL SIGKILL
        """;

    [Fact]
    public void SameConfigValuesAsPodman()
    {
        var file = DockerfileParser.Parse(Reference, "Dockerfile");
        var variables = new BuildVariables(file, new Dictionary<string, string>());
        var scope = variables.BeginStage(file.FinalStage, []);
        var expanded = file.FinalStage.Instructions.Select(scope.Apply).ToList();

        Assert.Equal(
            [
                "A=hello", "B=two words", "C=Rex The Dog", "D=single $A", "E=dq  $A \\ \"q\"", "F=def", "G=", "I=g1",
                "abc=bye", "def=hello", "LEGACY=legacy value  with  spaces", "CONT=one     two",
            ],
            scope.Environment);
        var labels = expanded.OfType<LabelInstruction>().SelectMany(l => l.Pairs).ToDictionary(p => p.Name, p => p.Value);
        Assert.Equal(new Dictionary<string, string>
        {
            ["com.example.vendor"] = "ACME Inc",
            ["version"] = "1.0",
            ["multi"] = "a b",
            ["k"] = "hello",
        }, labels);
        Assert.Equal(["80/tcp", "53/udp", "8080/tcp"],
            expanded.OfType<ExposeInstruction>().SelectMany(e => e.ParsePorts()).Select(p => p.ToString()));
        Assert.Equal(["/w/hello", "sub"], expanded.OfType<WorkdirInstruction>().Select(w => w.Path));
        Assert.Equal("hello:staff", expanded.OfType<UserInstruction>().Single().User);
        Assert.Equal("SIGKILL", expanded.OfType<StopSignalInstruction>().Single().Signal);
    }

    /// <summary>Podman refuses an unquoted ENV value continued onto a second line ("can't find = in two"): the
    /// joined line has a word without '='. So does Nestor, at the ENV's line.</summary>
    [Fact]
    public void UnquotedContinuedEnvIsRefusedAsByPodman()
    {
        var error = Assert.Throws<DockerfileException>(() =>
            DockerfileParser.Parse("FROM scratch\nENV CONT=one \\\n# comment inside\n    two", "Dockerfile"));
        Assert.Equal(2, error.Location.Line);
        Assert.Contains("'two' has no '='", error.Message);
    }
}
