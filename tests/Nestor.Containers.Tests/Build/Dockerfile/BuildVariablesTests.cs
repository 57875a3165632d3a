using Nestor.Containers.Build.Dockerfiles;

namespace Nestor.Containers.Tests.Build.Dockerfiles;

public class BuildVariablesTests
{
    private static (Dockerfile File, BuildVariables Variables) Load(string text, params (string, string)[] buildArgs)
    {
        var file = DockerfileParser.Parse(text, "Dockerfile");
        return (file, new BuildVariables(file, buildArgs.ToDictionary(a => a.Item1, a => a.Item2)));
    }

    private static StageScope Walk(BuildVariables variables, BuildStage stage, params string[] baseEnvironment)
    {
        var scope = variables.BeginStage(stage, baseEnvironment);
        foreach (var instruction in stage.Instructions)
        {
            scope.Apply(instruction);
        }
        return scope;
    }

    /// <summary>A global ARG is seen by FROM; --build-arg overrides its default; a later global default may use an
    /// earlier one.</summary>
    [Fact]
    public void GlobalArgsExpandFrom()
    {
        string text = "ARG VERSION=latest\nARG IMAGE=busybox:$VERSION\nFROM $IMAGE\nFROM ${VERSION}-x";
        var (file, variables) = Load(text);
        Assert.Equal("busybox:latest", variables.ExpandFrom(file.Stages[0]).BaseImage);
        var (file2, overridden) = Load(text, ("VERSION", "1.36"));
        Assert.Equal("busybox:1.36", overridden.ExpandFrom(file2.Stages[0]).BaseImage);
        Assert.Equal("1.36-x", overridden.ExpandFrom(file2.Stages[1]).BaseImage);
    }

    /// <summary>A global ARG is not visible inside a stage unless the stage declares it again without a value
    /// (the reference's VERSION example).</summary>
    [Fact]
    public void GlobalArgsNeedRedeclaring()
    {
        var (file, variables) = Load("ARG VERSION=latest\nFROM busybox:$VERSION\nWORKDIR /v$VERSION\nARG VERSION\nUSER u$VERSION");
        var scope = variables.BeginStage(file.FinalStage, []);
        Assert.Equal("/v", ((WorkdirInstruction)scope.Apply(file.FinalStage.Instructions[0])).Path);
        scope.Apply(file.FinalStage.Instructions[1]);
        Assert.Equal("ulatest", ((UserInstruction)scope.Apply(file.FinalStage.Instructions[2])).User);
    }

    /// <summary>An ARG is visible from its line to the end of its stage only, and --build-arg beats its default.</summary>
    [Fact]
    public void ArgScope()
    {
        string text = "FROM busybox\nUSER ${username:-some_user}\nARG username\nUSER $username\nFROM busybox\nUSER x$username";
        var (file, variables) = Load(text, ("username", "what_user"));
        var scope = variables.BeginStage(file.Stages[0], []);
        var users = file.Stages[0].Instructions.Select(scope.Apply).OfType<UserInstruction>().Select(u => u.User);
        Assert.Equal(["some_user", "what_user"], users);
        var second = variables.BeginStage(file.Stages[1], []);
        Assert.Equal("x", ((UserInstruction)second.Apply(file.Stages[1].Instructions[0])).User);

        var (defaulted, noArgs) = Load("FROM a\nARG user=someuser\nUSER $user");
        Assert.Equal(["user=someuser"], Walk(noArgs, defaulted.FinalStage).Arguments);
        var (overridden, withArg) = Load("FROM a\nARG user=someuser\nUSER $user", ("user", "other"));
        Assert.Equal(["user=other"], Walk(withArg, overridden.FinalStage).Arguments);
    }

    /// <summary>ENV beats an ARG of the same name (the reference's CONT_IMG_VER examples), and RUN's environment
    /// holds the ARGs ENV does not override.</summary>
    [Fact]
    public void EnvBeatsArg()
    {
        var (file, variables) = Load("FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=v1.0.0\nWORKDIR /$CONT_IMG_VER\nARG OTHER=o",
            ("CONT_IMG_VER", "v2.0.1"));
        var scope = variables.BeginStage(file.FinalStage, ["PATH=/usr/bin"]);
        var expanded = file.FinalStage.Instructions.Select(scope.Apply).ToList();
        Assert.Equal("/v1.0.0", ((WorkdirInstruction)expanded[2]).Path);
        Assert.Equal(["PATH=/usr/bin", "CONT_IMG_VER=v1.0.0"], scope.Environment);
        Assert.Equal(["PATH=/usr/bin", "CONT_IMG_VER=v1.0.0", "OTHER=o"], scope.RunEnvironment);

        var (file2, variables2) = Load("FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}", ("CONT_IMG_VER", "v2.0.1"));
        Assert.Equal(["CONT_IMG_VER=v2.0.1"], Walk(variables2, file2.FinalStage).Environment);
        var (file3, variables3) = Load("FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}");
        Assert.Equal(["CONT_IMG_VER=v1.0.0"], Walk(variables3, file3.FinalStage).Environment);
    }

    /// <summary>The base image's ENV is visible to expansion and may be overridden in place.</summary>
    [Fact]
    public void BaseImageEnvironment()
    {
        var (file, variables) = Load("FROM a\nWORKDIR $HOME/src\nENV PATH=/opt/bin:$PATH");
        var scope = variables.BeginStage(file.FinalStage, ["PATH=/usr/bin", "HOME=/root"]);
        Assert.Equal("/root/src", ((WorkdirInstruction)scope.Apply(file.FinalStage.Instructions[0])).Path);
        scope.Apply(file.FinalStage.Instructions[1]);
        Assert.Equal(["PATH=/opt/bin:/usr/bin", "HOME=/root"], scope.Environment);
    }

    /// <summary>Predefined proxy ARGs reach RUN without an ARG line; they are never unused; other undeclared
    /// build-args are reported as unused.</summary>
    [Fact]
    public void PredefinedAndUnusedArgs()
    {
        var (file, variables) = Load("ARG GLOBAL\nFROM a\nARG USED\nFROM b AS other\nARG ONLY_OTHER",
            ("HTTP_PROXY", "http://proxy:3128"), ("USED", "1"), ("GLOBAL", "g"), ("TYPO", "x"), ("ONLY_OTHER", "y"));
        var scope = Walk(variables, file.Stages[0]);
        Assert.Equal(["USED=1", "HTTP_PROXY=http://proxy:3128"], scope.RunEnvironment);
        Assert.Equal("http://proxy:3128", scope.Lookup("HTTP_PROXY"));
        Assert.Equal(["ONLY_OTHER", "TYPO"], variables.UnusedBuildArgs([file.Stages[0]]));
        Assert.Equal(["TYPO"], variables.UnusedBuildArgs(file.Stages));
    }

    /// <summary>The automatic platform ARGs are global (FROM sees them) and reach a stage only when declared.</summary>
    [Fact]
    public void PlatformArgs()
    {
        var file = DockerfileParser.Parse(
            "FROM --platform=$BUILDPLATFORM img:$TARGETARCH\nUSER x$TARGETARCH\nARG TARGETARCH\nARG TARGETVARIANT\nUSER $TARGETOS-$TARGETARCH-$TARGETVARIANT",
            "Dockerfile");
        var variables = new BuildVariables(file, new Dictionary<string, string>(), "linux/arm/v7", "linux/amd64");
        var from = variables.ExpandFrom(file.FinalStage);
        Assert.Equal("img:arm", from.BaseImage);
        Assert.Equal("linux/amd64", from.Platform);
        var scope = variables.BeginStage(file.FinalStage, []);
        var users = file.FinalStage.Instructions.Select(scope.Apply).OfType<UserInstruction>().Select(u => u.User);
        Assert.Equal(["x", "-arm-v7"], users);
    }

    private const string MultiStage = """
        ARG BASE=alpine
        FROM $BASE AS deps
        RUN fetch
        FROM deps AS build
        ARG FROM_STAGE=deps
        COPY --from=${FROM_STAGE} /x /x
        RUN build
        FROM alpine AS test
        COPY --from=build /out /out
        FROM scratch AS unused
        FROM alpine AS tools
        FROM scratch
        COPY --from=1 /out /app
        RUN --mount=type=bind,from=tools,target=/t true
        COPY --from=busybox:latest /bin/sh /sh
        """;

    /// <summary>--target builds the target and the stages it needs (FROM stage, COPY --from by name, variable or
    /// index, RUN --mount from=), in file order; unused stages are skipped; an image in --from is not a stage.</summary>
    [Fact]
    public void TargetResolution()
    {
        var (file, variables) = Load(MultiStage);
        Assert.Equal(["deps", "build", "tools", "5"],
            BuildTarget.StagesFor(variables, null).Select(s => s.DisplayName));
        Assert.Equal(["deps", "build", "test"], BuildTarget.StagesFor(variables, "TEST").Select(s => s.DisplayName));
        Assert.Equal(["deps"], BuildTarget.StagesFor(variables, "deps").Select(s => s.DisplayName));
        Assert.Equal(["unused"], BuildTarget.StagesFor(variables, "unused").Select(s => s.DisplayName));
        Assert.Same(file.Stages[0], BuildTarget.ResolveBase(variables, file.Stages[1]));
        Assert.Null(BuildTarget.ResolveBase(variables, file.Stages[0]));
        var error = Assert.Throws<DockerfileException>(() => BuildTarget.StagesFor(variables, "nope"));
        Assert.Contains("nope", error.Message);
        Assert.Contains("deps", error.Advice);
    }

    /// <summary>A --from that a variable turns into a later stage is refused when the target is resolved.</summary>
    [Fact]
    public void VariableFromNamingALaterStage()
    {
        var (_, variables) = Load("FROM a AS one\nARG S=two\nCOPY --from=$S /a /b\nFROM b AS two");
        var error = Assert.Throws<DockerfileException>(() => BuildTarget.StagesFor(variables, "one"));
        Assert.Equal(3, error.Location.Line);
        Assert.Contains("later stage", error.Message);
    }
}
