using Nestor.Containers.Tests.Engine;

namespace Nestor.Containers.Tests.Build;

/// <summary>ONBUILD triggers run in the build that uses the image as its base (with that build's context and
/// environment), before the child's own instructions, and are not inherited by the child; and BuildKit's pattern
/// removal (<c>${VAR##*/}</c> and the others) in a real build's ENV and WORKDIR.</summary>
public sealed class BuildOnbuildTests(BuildFixture fixture) : IClassFixture<BuildFixture>
{
    [Fact]
    public void TriggersRunInTheChildWithItsContextAndAreNotInherited()
    {
        string parent = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"""
                FROM {EngineFixture.ImageName}
                ENV WHO=parent
                ONBUILD COPY marker.txt /from-child/
                ONBUILD RUN echo "triggered for $WHO" > /triggered
                """,
            ["marker.txt"] = "the parent's marker\n",
        });
        var built = fixture.Build("-t", "onbase:v1", "--network", "none", parent);
        Assert.True(built.Status == 0, built.ToString());
        var onbase = fixture.Store.Resolve("onbase:v1");
        Assert.Equal(2, onbase.Config.OnBuild!.Count);
        Assert.StartsWith("COPY marker.txt", onbase.Config.OnBuild[0]);
        Assert.Null(fixture.ReadFile(onbase, "/triggered")); // stored, not run, in the image that declares them
        Assert.Null(fixture.ReadFile(onbase, "/from-child/marker.txt"));

        string child = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = "FROM onbase:v1\nENV WHO=child\nRUN cat /from-child/marker.txt /triggered > /seen\n",
            ["marker.txt"] = "the child's marker\n",
        });
        var childBuild = fixture.Build("-t", "onchild:v1", "--network", "none", child);
        Assert.True(childBuild.Status == 0, childBuild.ToString());
        Assert.Contains("# Executing 2 build triggers", childBuild.Output);
        Assert.Contains("STEP 2/5: COPY marker.txt /from-child/", childBuild.Output);
        var onchild = fixture.Store.Resolve("onchild:v1");
        // The triggers ran before the child's ENV, so $WHO was still the parent's.
        Assert.Equal("the child's marker\ntriggered for parent\n", fixture.ReadFile(onchild, "/seen"));
        Assert.True(onchild.Config.OnBuild is null or { Count: 0 });

        // A rebuild: the triggers' steps come from the cache like any other step.
        var again = fixture.Build("-t", "onchild:v1", "--network", "none", child);
        Assert.True(again.Status == 0, again.ToString());
        Assert.Equal(4, again.Output.Split('\n').Count(line => line == "--> CACHED"));
        Assert.Equal(onchild.Id, fixture.Store.Resolve("onchild:v1").Id);

        // A grandchild's context has no marker.txt: an inherited COPY trigger would fail.
        string grandchild = fixture.Context(new Dictionary<string, string> { ["Dockerfile"] = "FROM onchild:v1\nRUN cat /seen\n" });
        var grand = fixture.Build("-t", "ongrand:v1", "--network", "none", grandchild);
        Assert.True(grand.Status == 0, grand.ToString());
        Assert.DoesNotContain("build trigger", grand.Output);
        Assert.Empty(fixture.Mounts());
    }

    [Fact]
    public void PatternRemovalExpandsInARealBuild()
    {
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $$"""
                FROM {{EngineFixture.ImageName}}
                ARG ARCHIVE=/srv/pkg/tool-1.2.tar.gz
                ENV FILE=${ARCHIVE##*/} DIR=${ARCHIVE%/*} STEM=${ARCHIVE%%.*} REL=${ARCHIVE#/srv/}
                WORKDIR ${DIR#/srv}
                RUN echo "${FILE%.gz}" > name
                """,
        });
        var build = fixture.Build("-t", "patterns:v1", "--network", "none", context);
        Assert.True(build.Status == 0, build.ToString());
        var image = fixture.Store.Resolve("patterns:v1");
        Assert.Contains("FILE=tool-1.2.tar.gz", image.Config.Env!);
        Assert.Contains("DIR=/srv/pkg", image.Config.Env!);
        Assert.Contains("STEM=/srv/pkg/tool-1", image.Config.Env!);
        Assert.Contains("REL=pkg/tool-1.2.tar.gz", image.Config.Env!);
        Assert.Equal("/pkg", image.Config.WorkingDir);
        Assert.Equal("tool-1.2.tar\n", fixture.ReadFile(image, "/pkg/name")); // the shell's own ${FILE%.gz} in RUN
    }
}
