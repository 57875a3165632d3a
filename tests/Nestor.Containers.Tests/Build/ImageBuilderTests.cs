using System.Formats.Tar;
using System.IO.Compression;
using Nestor.Containers.Tests.Engine;
using Nestor.Host;

namespace Nestor.Containers.Tests.Build;

/// <summary><c>nestor build</c> through the real command on the fixture's busybox image: every instruction's effect
/// on the config and the layers, the cache, multi-stage builds, and failures that leave nothing behind.</summary>
public sealed class ImageBuilderTests(BuildFixture fixture) : IClassFixture<BuildFixture>
{
    private const string Base = EngineFixture.ImageName;

    [Fact]
    public void EveryInstructionLandsInTheConfigOrALayer()
    {
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $$"""
                # syntax=docker/dockerfile:1
                ARG BASE={{Base}}
                FROM $BASE
                ARG GREETING=hello
                ENV APP=/srv/app \
                    MODE=test
                WORKDIR $APP
                RUN echo "$GREETING from $MODE" > greeting && rm /bin/vi && id -u > uid
                COPY --chmod=750 tool.sh bin/
                COPY --chown=nobody:nogroup data/ data/
                ADD bundle.tar.gz /opt/
                ADD bundle.tar.xz /opt/xz/
                SHELL ["/bin/sh", "-ec"]
                RUN test -x bin/tool.sh && ./bin/tool.sh > tool.out
                LABEL course=virtualization "built by"=nestor
                EXPOSE 80 53/udp
                VOLUME /data
                STOPSIGNAL SIGQUIT
                HEALTHCHECK --interval=5s --retries=2 CMD ["true"]
                USER nobody
                ENTRYPOINT ["/bin/sh", "-c"]
                CMD cat greeting
                """,
            ["tool.sh"] = "#!/bin/sh\necho tool ran\n",
            ["data/one.txt"] = "one\n",
        });
        WriteArchive(Path.Combine(context, "bundle.tar.gz"), "gzip");
        WriteArchive(Path.Combine(context, "bundle.tar.xz"), "xz");
        var build = fixture.Build("-t", "every:v1", "--network", "none", "--build-arg", "GREETING=hi", context);
        Assert.True(build.Status == 0, build.ToString());
        Assert.Contains("STEP 1/19: FROM $BASE", build.Output);
        Assert.Contains("STEP 5/19: RUN echo", build.Output);
        Assert.Contains("Successfully tagged ", build.Output);
        Assert.Contains("every:v1", build.Output);

        var store = fixture.Store;
        var image = store.Resolve("every:v1");
        var config = image.Config;
        Assert.Equal(["/bin/sh", "-c"], config.Entrypoint);
        Assert.Equal(["/bin/sh", "-ec", "cat greeting"], config.Cmd); // shell form through the SHELL of the stage
        Assert.Contains("APP=/srv/app", config.Env!);
        Assert.Contains("MODE=test", config.Env!);
        Assert.Contains("PATH=/bin", config.Env!);
        Assert.DoesNotContain(config.Env!, variable => variable.StartsWith("GREETING=", StringComparison.Ordinal)); // an ARG is not stored
        Assert.Equal("/srv/app", config.WorkingDir);
        Assert.Equal("nobody", config.User);
        Assert.Equal(["53/udp", "80/tcp"], config.ExposedPorts!.Keys.Order(StringComparer.Ordinal));
        Assert.Equal("virtualization", config.Labels!["course"]);
        Assert.Equal("nestor", config.Labels!["built by"]);
        Assert.Equal(["/data"], config.Volumes!.Keys);
        Assert.Equal("SIGQUIT", config.StopSignal);
        Assert.Equal(["CMD", "true"], config.Healthcheck!.Test);
        Assert.Equal(5_000_000_000, config.Healthcheck.Interval);
        Assert.Equal(2, config.Healthcheck.Retries);
        Assert.Equal(["/bin/sh", "-ec"], config.Shell);

        // Layers: the base's, then one per RUN, COPY and ADD (6); the rest are empty-layer history entries.
        Assert.Equal(fixture.Engine.Image.LayerDiffIds.Count + 6, image.LayerDiffIds.Count);
        var history = store.ReadConfiguration(image).History!;
        Assert.Equal(image.LayerDiffIds.Count, history.Count(entry => entry.EmptyLayer != true));
        Assert.Contains(history, entry => entry.CreatedBy == "/bin/sh -c #(nop) EXPOSE 80 53/udp" && entry.EmptyLayer == true);
        Assert.Contains(history, entry => entry.CreatedBy!.StartsWith("|1 GREETING=hi /bin/sh -c echo ", StringComparison.Ordinal));

        Assert.Equal("hi from test\n", fixture.ReadFile(image, "/srv/app/greeting"));
        Assert.Equal("0\n", fixture.ReadFile(image, "/srv/app/uid")); // RUN before USER runs as root
        Assert.Equal("tool ran\n", fixture.ReadFile(image, "/srv/app/tool.out"));
        string runLayer = store.LayerDirectory(image.LayerDiffIds[fixture.Engine.Image.LayerDiffIds.Count]);
        var whiteout = FileSystemCalls.LStat(Path.Combine(runLayer, "bin", "vi")); // rm /bin/vi: an overlay whiteout
        Assert.Equal(FileSystemCalls.S_IFCHR, whiteout.Mode & FileSystemCalls.S_IFMT);
        string copied = FindInLayers(image, "srv/app/bin/tool.sh");
        Assert.Equal(0x1e8u, FileSystemCalls.LStat(copied).Mode & 0xfff); // --chmod=750
        var data = FileSystemCalls.LStat(FindInLayers(image, "srv/app/data/one.txt"));
        Assert.Equal((65534u, 65534u), (data.Uid, data.Gid)); // --chown=nobody:nogroup by the image's /etc/passwd
        Assert.Equal("inside\n", fixture.ReadFile(image, "/opt/bundle/inside.txt")); // ADD unpacked the gzip tar
        Assert.Equal("inside\n", fixture.ReadFile(image, "/opt/xz/bundle/inside.txt")); // and the xz one

        // The image runs by its config: in WORKDIR, as USER (its own ENTRYPOINT sh -c with the shell-form CMD would
        // run "sh -c /bin/sh -ec …", Docker's well-known pairing, so the command is given here).
        var run = fixture.Engine.Container("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", "every:v1", "-c", "cat greeting; id -u; pwd");
        Assert.True(run.Status == 0, run.ToString());
        Assert.Equal("hi from test\n65534\n/srv/app\n", run.Output);
        Assert.Empty(fixture.Mounts());
    }

    private string FindInLayers(Nestor.Containers.Images.StoredImage image, string path) =>
        image.LayerDiffIds.Reverse().Select(diffId => Path.Combine(fixture.Store.LayerDirectory(diffId), path)).First(File.Exists);

    private static void WriteArchive(string path, string compression)
    {
        string tar = path + ".tar";
        using (var file = File.Create(tar))
        using (var writer = new TarWriter(file, TarEntryFormat.Pax))
        {
            writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "bundle/") { Mode = (UnixFileMode)0x1ed });
            var entry = new PaxTarEntry(TarEntryType.RegularFile, "bundle/inside.txt") { Mode = (UnixFileMode)0x1a4, DataStream = new MemoryStream("inside\n"u8.ToArray()) };
            writer.WriteEntry(entry);
        }
        if (compression == "gzip")
        {
            using var input = File.OpenRead(tar);
            using var output = new GZipStream(File.Create(path), CompressionLevel.Fastest);
            input.CopyTo(output);
        }
        else
        {
            Images.TemporaryDirectory.Run("xz", "-z", "-k", tar);
            File.Move(tar + ".xz", path);
        }
        File.Delete(tar);
    }

    [Fact]
    public void RebuildRunsNoStepAndAChangedFileRerunsFromItsCopy()
    {
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"""
                FROM {Base}
                RUN echo first > /first
                COPY app.txt /app.txt
                RUN cat /app.txt > /copy-of-app
                CMD ["cat", "/copy-of-app"]
                """,
            ["app.txt"] = "version 1\n",
        });
        var first = fixture.Build("-t", "cached:v1", "--network", "none", context);
        Assert.True(first.Status == 0, first.ToString());
        Assert.DoesNotContain("CACHED", first.Output);
        var image = fixture.Store.Resolve("cached:v1");

        var again = fixture.Build("-t", "cached:v1", "--network", "none", context);
        Assert.True(again.Status == 0, again.ToString());
        Assert.Equal(4, CountOf(again.Output, "--> CACHED"));
        Assert.Equal(image.Id, fixture.Store.Resolve("cached:v1").Id); // nothing ran: the very same image

        // mtime alone does not change the content digest; the content does.
        File.SetLastWriteTimeUtc(Path.Combine(context, "app.txt"), DateTime.UtcNow.AddDays(-3));
        Assert.Equal(4, CountOf(fixture.Build("-t", "cached:v1", "--network", "none", context).Output, "--> CACHED"));
        File.WriteAllText(Path.Combine(context, "app.txt"), "version 2\n");
        var changed = fixture.Build("-t", "cached:v1", "--network", "none", context);
        Assert.True(changed.Status == 0, changed.ToString());
        string[] steps = changed.Output.Split("STEP ")[1..];
        Assert.Contains("--> CACHED", steps[1]); // RUN echo first
        Assert.DoesNotContain("--> CACHED", steps[2]); // COPY app.txt
        Assert.DoesNotContain("--> CACHED", steps[3]); // the RUN after it
        var rebuilt = fixture.Store.Resolve("cached:v1");
        Assert.Equal(image.LayerDiffIds.Take(image.LayerDiffIds.Count - 2), rebuilt.LayerDiffIds.Take(rebuilt.LayerDiffIds.Count - 2));
        Assert.Equal("version 2\n", fixture.ReadFile(rebuilt, "/copy-of-app"));

        var noCache = fixture.Build("-t", "cached:v1", "--network", "none", "--no-cache", context);
        Assert.True(noCache.Status == 0, noCache.ToString());
        Assert.DoesNotContain("CACHED", noCache.Output);
    }

    private static int CountOf(string text, string part) => text.Split(part).Length - 1;

    [Fact]
    public void MultiStageCopiesFromAnEarlierStageAndTargetStopsThere()
    {
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"""
                FROM {Base} AS builder
                RUN mkdir /out && echo built > /out/artifact
                FROM {Base} AS unused
                RUN echo never > /never
                FROM scratch AS final
                COPY --from=builder /out/artifact /artifact
                COPY --from=0 /bin/busybox /bin/busybox
                CMD ["/bin/busybox", "cat", "/artifact"]
                """,
        });
        var build = fixture.Build("-t", "staged:v1", "--network", "none", context);
        Assert.True(build.Status == 0, build.ToString());
        Assert.DoesNotContain("echo never", build.Output); // a stage nothing needs is not built
        var image = fixture.Store.Resolve("staged:v1");
        Assert.Equal(2, image.LayerDiffIds.Count); // FROM scratch: only the two COPY layers
        Assert.Equal("built\n", fixture.ReadFile(image, "/artifact"));
        var run = fixture.Engine.Container("run", "--rm", "--network", "none", "staged:v1");
        Assert.True(run.Status == 0, run.ToString());
        Assert.Equal("built\n", run.Output);

        var target = fixture.Build("-t", "staged:builder", "--network", "none", "--target", "builder", context);
        Assert.True(target.Status == 0, target.ToString());
        Assert.Contains("STEP 2/2:", target.Output);
        var builder = fixture.Store.Resolve("staged:builder");
        Assert.Equal("built\n", fixture.ReadFile(builder, "/out/artifact"));
        Assert.Equal(1, fixture.Build("--target", "nope", context).Status);
    }

    [Fact]
    public void AFailedRunReportsItsStatusAndLineAndLeavesNothing()
    {
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"""
                FROM {Base}
                RUN echo before

                RUN echo failing && exit 3
                """,
        });
        int images = fixture.Store.List().Count;
        var build = fixture.Build("-t", "failed:v1", "--network", "none", context);
        Assert.Equal(1, build.Status);
        Assert.Contains("Dockerfile:4", build.Error);
        Assert.Contains("status 3", build.Error);
        Assert.Contains("failing", build.Output);
        Assert.Equal(images, fixture.Store.List().Count);
        Assert.Empty(fixture.Engine.ContainerIds());
        Assert.Empty(fixture.Mounts());
        Assert.False(Directory.EnumerateDirectories(Path.Combine(fixture.Store.Root, "tmp")).Any(), "the build's work directory stayed");
    }

    [Theory]
    [InlineData("FROM busybox\nFETCH something\n", "Dockerfile:2")]
    [InlineData("FROM busybox\nADD http://example.org/file /file\n", "fetches no URLs")]
    [InlineData("FROM no-such-image:v9\n", "no such image")]
    [InlineData("FROM busybox\nCOPY missing.txt /\n", "missing.txt: no such file")]
    public void BadInputIsAnErrorWithTheFileAndLine(string dockerfile, string expected)
    {
        string context = fixture.Context(new Dictionary<string, string> { ["Dockerfile"] = dockerfile });
        var build = fixture.Build("--network", "none", context);
        Assert.Equal(1, build.Status);
        Assert.Contains(expected, build.Error);
        Assert.Contains("Dockerfile:", build.Error);
    }
}
