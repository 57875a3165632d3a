using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using Nestor.Containers.Build.Dockerfiles;
using Nestor.Containers.Engine;
using Nestor.Containers.Images;
using Nestor.Containers.Registry;
using Nestor.Containers.Runtime;
using Nestor.Containers.Storage;
using Nestor.Host;

namespace Nestor.Containers.Build;

/// <summary><c>nestor build</c>: builds the target stage of a Dockerfile (and the stages it needs) into the image
/// store. Each stage starts from its base (an image of the store, <c>scratch</c>, or an earlier stage) and each
/// instruction makes a new state: RUN runs its command in a real container of the engine on the state so far and
/// the container's overlay upper directory becomes a layer (<see cref="LayerDiff"/>, as <c>container commit</c>
/// makes one); COPY and ADD write into the state's overlay mounted on the host and its upper directory becomes the
/// layer; the other instructions change the config only and add an empty-layer history entry, with created_by as
/// podman writes it (<c>/bin/sh -c #(nop) CMD ["sh"]</c>). Run by an unprivileged user nothing is mounted on the host
/// (<see cref="RootlessBuild"/>): RUN is a rootless container, COPY and ADD write into the upper directory over a view
/// of the state's layers, and owners and layers go through a user namespace that maps the subordinate ids. Every state is an image in the store's blobs that the
/// index does not name, found again through <see cref="BuildCache"/>; the last is named by the tags.</summary>
public sealed class ImageBuilder(ContainerEngine engine, IBuildProgress progress)
{
    /// <summary>The shell of shell-form instructions when no SHELL says otherwise (Dockerfile reference, SHELL).</summary>
    public static readonly IReadOnlyList<string> DefaultShell = ["/bin/sh", "-c"];

    private ContainerEngine Engine => engine;

    private IBuildProgress Progress => progress;

    private ImageStore Store => engine.Images as ImageStore
        ?? throw new BuildException("nestor build needs the local image store", "run it without a custom image store");

    /// <summary>Builds as <paramref name="options"/> say; returns the image and the counts of steps run and cached.
    /// Throws <see cref="DockerfileException"/> for a bad Dockerfile and <see cref="BuildException"/> for a failed
    /// step; either way no image is named and no container or mount of the build is left.</summary>
    public BuildResult Build(BuildOptions options)
    {
        if (ContainerPaths.Rootless)
        {
            RootlessBuild.CheckSubordinateIds();
        }
        string dockerfilePath = options.DockerfilePath ?? FindDockerfile(Path.GetFullPath(options.ContextDirectory));
        var context = BuildContext.Open(options.ContextDirectory, dockerfilePath);
        if (!File.Exists(dockerfilePath))
        {
            throw new BuildException($"no Dockerfile at {dockerfilePath}", "give one with -f FILE, or put a Dockerfile (or Containerfile) in the context directory");
        }
        var dockerfile = DockerfileParser.Parse(File.ReadAllText(dockerfilePath), Path.GetFileName(dockerfilePath));
        var variables = new BuildVariables(dockerfile, options.BuildArgs);
        var needed = BuildTarget.StagesFor(variables, options.Target);
        var target = needed[^1];
        int total = needed.Sum(stage => 1 + stage.Instructions.Count);
        var run = new BuildRun(this, options, context, variables, total);
        string work = Path.Combine(Store.Layout.TemporaryDirectory, "build-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(work);
        StoredImage result;
        try
        {
            foreach (var stage in needed)
            {
                run.Results[stage.Index] = run.BuildStage(stage, work);
            }
            result = run.Results[target.Index];
        }
        finally
        {
            RemoveWorkDirectory(work);
        }
        foreach (string unused in variables.UnusedBuildArgs(needed))
        {
            progress.Message($"[Warning] one or more build args were not consumed: [{unused}]");
        }
        progress.Message("COMMIT " + string.Join(", ", options.Tags));
        if (options.Tags.Count == 0)
        {
            using var _ = Store.Lock();
            Store.AddToIndex(new OciDescriptor { MediaType = OciMediaTypes.Manifest, Digest = result.ManifestDigest, Size = Store.Layout.ReadBlob(result.ManifestDigest).LongLength }, null);
        }
        foreach (string tag in options.Tags)
        {
            result = Store.NameManifest(result.ManifestDigest, tag);
        }
        progress.Message("--> " + PlainBuildProgress.ShortId(result.Id));
        foreach (string tag in options.Tags)
        {
            progress.Message("Successfully tagged " + ImageReference.Parse(tag));
        }
        progress.Message(Digest.Hex(result.Id));
        return new BuildResult(result, run.StepsRun, run.StepsCached);
    }

    /// <summary>The Dockerfile of a context: <c>Dockerfile</c>, else podman's <c>Containerfile</c>.</summary>
    private static string FindDockerfile(string context)
    {
        string dockerfile = Path.Combine(context, "Dockerfile");
        string containerfile = Path.Combine(context, "Containerfile");
        return !File.Exists(dockerfile) && File.Exists(containerfile) ? containerfile : dockerfile;
    }

    private static void RemoveWorkDirectory(string work)
    {
        foreach (string line in File.ReadAllLines("/proc/self/mountinfo").Reverse())
        {
            string mountPoint = MountInfo.Unescape(line.Split(' ')[4]);
            if (mountPoint.StartsWith(work + "/", StringComparison.Ordinal))
            {
                MountCalls.TryUnmountDetached(mountPoint);
            }
        }
        if (ContainerPaths.Rootless)
        {
            RootlessStorage.RemoveTree(work); // COPY --chown leaves files of subordinate ids
        }
        else if (Directory.Exists(work))
        {
            Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>One build's progress through its stages.</summary>
    private sealed class BuildRun(ImageBuilder builder, BuildOptions options, BuildContext context, BuildVariables variables, int total)
    {
        private readonly Dockerfiles.Dockerfile dockerfile = variables.Dockerfile;
        private readonly BuildCache cache = new(builder.Store);
        private readonly HashSet<string> pulled = new(StringComparer.Ordinal);
        private int step;

        public Dictionary<int, StoredImage> Results { get; } = [];
        public int StepsRun { get; private set; }
        public int StepsCached { get; private set; }

        private ImageStore Store => builder.Store;
        private IBuildProgress Progress => builder.Progress;

        public StoredImage BuildStage(BuildStage stage, string work)
        {
            var from = variables.ExpandFrom(stage);
            Progress.Step(++step, total, FirstLine(stage.From.OriginalText));
            StoredImage state = BaseOf(stage, from);
            var scope = variables.BeginStage(stage, state.Config.Env ?? []);
            bool cmdInStage = false;
            var triggers = Triggers(state, from);
            if (triggers.Count > 0)
            {
                // The reference (ONBUILD): the base's triggers run first, in order, as if written right after FROM,
                // and the child does not inherit them (a grandchild runs only the child's own ONBUILDs).
                Progress.Message($"# Executing {triggers.Count} build trigger{(triggers.Count == 1 ? "" : "s")}");
                total += triggers.Count;
                state = WithoutTriggers(state);
            }
            foreach (var instruction in triggers.Concat(stage.Instructions))
            {
                Progress.Step(++step, total, FirstLine(instruction.OriginalText));
                var expanded = scope.Apply(instruction);
                state = instruction switch
                {
                    RunInstruction => Run(state, (RunInstruction)expanded, scope, work),
                    CopyInstruction => Copy(state, (CopyInstruction)expanded, stage, work),
                    _ => Metadata(state, instruction, expanded, scope, ref cmdInStage),
                };
            }
            return state;
        }

        private static string FirstLine(string text) => text.Split('\n')[0];

        /// <summary>The ONBUILD triggers of a stage's base (its config's <c>OnBuild</c>, each an instruction's
        /// canonical text), parsed as instructions of the stage; their locations name the base.</summary>
        private static IReadOnlyList<Instruction> Triggers(StoredImage state, FromInstruction from)
        {
            if (state.Config.OnBuild is not { Count: > 0 } onBuild)
            {
                return [];
            }
            try
            {
                var parsed = DockerfileParser.Parse("FROM scratch\n" + string.Join('\n', onBuild) + "\n", $"ONBUILD of {from.BaseImage}");
                return parsed.Stages[0].Instructions;
            }
            catch (DockerfileException exception)
            {
                throw new BuildException($"{from.Location}: FROM {from.BaseImage}: its ONBUILD triggers do not parse: {exception.Message}",
                    "rebuild the base image with valid ONBUILD instructions", exception);
            }
        }

        /// <summary><paramref name="state"/> with an empty <c>OnBuild</c>: same layers and history, so the same
        /// base always gives the same state (and the cache keys after it stay stable).</summary>
        private StoredImage WithoutTriggers(StoredImage state)
        {
            var configuration = Store.ReadConfiguration(state);
            configuration.Config!.OnBuild = null;
            return Store.WriteUnindexedImage(configuration, Store.ReadManifest(state.ManifestDigest).Layers);
        }

        /// <summary>The stage's base: an earlier stage's result, <c>scratch</c> (no layers, an empty config), or an
        /// image of the store.</summary>
        private StoredImage BaseOf(BuildStage stage, FromInstruction from)
        {
            if (BuildTarget.ResolveBase(variables, stage) is { } earlier)
            {
                return Results[earlier.Index];
            }
            if (from.IsScratch)
            {
                return Scratch();
            }
            return Obtain(from.BaseImage, $"{from.Location}: FROM {from.BaseImage}");
        }

        /// <summary>An image a stage starts from or copies from, by the pull policy: the local store's, or pulled
        /// from its registry first through <see cref="ImageTransfer"/> (the client of <c>nestor image pull</c>) when
        /// the store lacks it or <c>--pull</c> says always, as <c>docker build</c> and <c>podman build</c> do. Each
        /// reference is pulled at most once per build (a later stage or COPY --from naming it again uses that pull).</summary>
        private StoredImage Obtain(string reference, string what)
        {
            bool pulledNow = pulled.Contains(reference);
            if (options.Pull != PullPolicy.Always || pulledNow)
            {
                try
                {
                    return Store.Resolve(reference);
                }
                catch (ImageNotFoundException exception) when (options.Pull == PullPolicy.Never)
                {
                    throw new BuildException($"{what}: no such image in the local store, and --pull=never forbids pulling {reference}",
                        $"pull it first (nestor image pull {reference}), or build without --pull=never", exception);
                }
                catch (ImageNotFoundException) when (!pulledNow)
                {
                    // Missing: pulled below.
                }
            }
            if (!ImageReference.TryParse(reference, out var parsed, out string? problem))
            {
                throw new BuildException($"{what}: '{reference}' is neither an image of the local store nor a reference a registry could serve ({problem})",
                    "give NAME[:TAG] or REGISTRY/REPOSITORY[:TAG|@DIGEST]");
            }
            Progress.Message($"Trying to pull {parsed}...");
            var transfer = new ImageTransfer(new RegistryClientOptions
            {
                TlsVerify = options.TlsVerify,
                Credentials = RegistryCredentialStore.FromEnvironment(),
            }, Progress.Message);
            try
            {
                transfer.PullAsync(parsed, new ImageStoreContentStore(Store)).GetAwaiter().GetResult();
            }
            catch (RegistryException exception)
            {
                string local = options.Pull == PullPolicy.Always ? "" : "no such image in the local store, and ";
                throw new BuildException($"{what}: {local}pulling {parsed} failed: {exception.Message}",
                    options.Pull == PullPolicy.Always ? "check the name and the registry, or build with the local copy (without --pull)"
                        : "check the name and the registry (nestor image pull shows the same), or load the image into the store first", exception);
            }
            pulled.Add(reference);
            return Store.Resolve(parsed.ToString());
        }

        private StoredImage Scratch()
        {
            var configuration = new OciImageConfiguration { Config = new ImageConfig(), History = [] };
            return Store.WriteUnindexedImage(configuration, []);
        }

        /// <summary>Looks the step up in the cache (unless --no-cache); otherwise runs it and records it.</summary>
        private StoredImage Cached(StoredImage parent, Instruction expanded, IEnumerable<string> inputs, Func<StoredImage> execute)
        {
            string key = BuildCache.Key(parent.Id, expanded.ToCanonicalText(), inputs);
            if (!options.NoCache && cache.TryGet(key) is { } hit)
            {
                Progress.Cached(hit.Id);
                StepsCached++;
                return hit;
            }
            var clock = Stopwatch.StartNew();
            var state = execute();
            cache.Put(key, state);
            Progress.Produced(state.Id, clock.Elapsed);
            StepsRun++;
            return state;
        }

        // ---- metadata ----

        private StoredImage Metadata(StoredImage state, Instruction written, Instruction expanded, StageScope scope, ref bool cmdInStage)
        {
            bool resetCmd = expanded is EntrypointInstruction && !cmdInStage;
            cmdInStage |= expanded is CmdInstruction;
            var environment = scope.Environment.ToList();
            return Cached(state, expanded, ["env", .. environment, resetCmd ? "reset-cmd" : ""], () =>
            {
                var configuration = Store.ReadConfiguration(state);
                var config = configuration.Config ??= new ImageConfig();
                var shell = config.Shell ?? [.. DefaultShell];
                switch (expanded)
                {
                    case CmdInstruction cmd:
                        config.Cmd = [.. cmd.Command.ToArguments(shell)];
                        break;
                    case EntrypointInstruction entrypoint:
                        config.Entrypoint = [.. entrypoint.Command.ToArguments(shell)];
                        if (resetCmd)
                        {
                            config.Cmd = null; // the reference: ENTRYPOINT resets a CMD inherited from the base image
                        }
                        break;
                    case EnvInstruction:
                        config.Env = environment;
                        break;
                    case ArgInstruction:
                        break;
                    case WorkdirInstruction workdir:
                        config.WorkingDir = workdir.Path.StartsWith('/') ? Normalize(workdir.Path)
                            : Normalize((config.WorkingDir ?? "/") + "/" + workdir.Path);
                        break;
                    case UserInstruction user:
                        config.User = user.User;
                        break;
                    case ExposeInstruction expose:
                        config.ExposedPorts ??= [];
                        foreach (var port in expose.ParsePorts())
                        {
                            config.ExposedPorts[port.ToString()] = EmptyObject();
                        }
                        break;
                    case LabelInstruction label:
                        config.Labels ??= [];
                        foreach (var pair in label.Pairs)
                        {
                            config.Labels[pair.Name] = pair.Value;
                        }
                        break;
                    case VolumeInstruction volume:
                        config.Volumes ??= [];
                        foreach (string path in volume.Paths)
                        {
                            config.Volumes[path] = EmptyObject();
                        }
                        break;
                    case ShellInstruction shellInstruction:
                        config.Shell = [.. shellInstruction.Shell];
                        break;
                    case StopSignalInstruction stop:
                        try
                        {
                            Signals.Parse(stop.Signal);
                        }
                        catch (ContainerEngineException exception)
                        {
                            throw new BuildException($"{stop.Location}: STOPSIGNAL {stop.Signal}: {exception.Message}", "give a name such as SIGTERM or a number");
                        }
                        config.StopSignal = stop.Signal;
                        break;
                    case HealthcheckInstruction health:
                        config.Healthcheck = new HealthConfig
                        {
                            Test = [.. health.Test],
                            Interval = Nanoseconds(health.Interval),
                            Timeout = Nanoseconds(health.Timeout),
                            StartPeriod = Nanoseconds(health.StartPeriod),
                            StartInterval = Nanoseconds(health.StartInterval),
                            Retries = health.Retries,
                        };
                        break;
                    case OnbuildInstruction onbuild:
                        (config.OnBuild ??= []).Add(onbuild.TriggerText);
                        break;
                    case MaintainerInstruction maintainer:
                        configuration.Author = maintainer.Name;
                        break;
                    default:
                        throw new BuildException($"{expanded.Location}: {expanded.Keyword} is not supported by nestor build", "remove the instruction");
                }
                AddHistory(configuration, "/bin/sh -c #(nop) " + written.ToCanonicalText(), emptyLayer: true);
                return Store.WriteUnindexedImage(configuration, Store.ReadManifest(state.ManifestDigest).Layers);
            });
        }

        private static long? Nanoseconds(TimeSpan? duration) => duration is { } value ? value.Ticks * 100 : null;

        private static JsonElement EmptyObject()
        {
            using var document = JsonDocument.Parse("{}");
            return document.RootElement.Clone();
        }

        private static string Normalize(string path) => "/" + BuildContext.Clean(path);

        private static void AddHistory(OciImageConfiguration configuration, string createdBy, bool emptyLayer)
        {
            var now = DateTimeOffset.UtcNow;
            now = new DateTimeOffset(now.Ticks - now.Ticks % TimeSpan.TicksPerMillisecond, TimeSpan.Zero);
            configuration.Created = now;
            (configuration.History ??= []).Add(new OciHistory { Created = now, CreatedBy = createdBy, EmptyLayer = emptyLayer ? true : null });
        }

        /// <summary>A new state: <paramref name="parent"/> with the layer of <paramref name="upperDirectory"/> on top.</summary>
        private StoredImage WithLayer(StoredImage parent, string upperDirectory, string createdBy)
        {
            (OciDescriptor Descriptor, string DiffId) layer;
            if (ContainerPaths.Rootless)
            {
                layer = RootlessBuild.WriteLayer(Store, builder.Engine.MonitorCommand, upperDirectory);
            }
            else
            {
                using (Store.Lock())
                {
                    layer = Store.WriteLayerFromDirectory(upperDirectory);
                }
            }
            var configuration = Store.ReadConfiguration(parent);
            configuration.RootFileSystem.DiffIds.Add(layer.DiffId);
            AddHistory(configuration, createdBy, emptyLayer: false);
            return Store.WriteUnindexedImage(configuration, [.. Store.ReadManifest(parent.ManifestDigest).Layers, layer.Descriptor]);
        }

        /// <summary>The overlay root of <paramref name="state"/> under <paramref name="directory"/> (an empty lower
        /// directory for a state without layers: overlayfs needs one).</summary>
        private ContainerRootFileSystem RootOf(StoredImage state, string directory)
        {
            Directory.CreateDirectory(directory);
            if (state.LayerDiffIds.Count > 0)
            {
                return Store.CreateRootFileSystem(state, directory);
            }
            string empty = Path.Combine(directory, "empty");
            var paths = new[] { empty, Path.Combine(directory, "upper"), Path.Combine(directory, "work"), Path.Combine(directory, "merged") };
            foreach (string path in paths)
            {
                Directory.CreateDirectory(path);
            }
            var root = new ContainerRootFileSystem([empty], paths[1], paths[2], paths[3]);
            return root with { Mount = () => OverlayMount.Mount(root, rootless: false) };
        }

        // ---- RUN ----

        private StoredImage Run(StoredImage state, RunInstruction run, StageScope scope, string work)
        {
            int sshCount = 0;
            var mounts = new List<RunMount>();
            foreach (string text in run.Mounts)
            {
                var mount = RunMount.Parse(text, run.Location, sshCount);
                sshCount += mount.Type == RunMountType.Ssh ? 1 : 0;
                mounts.Add(mount);
            }
            CheckSecretsAndAgents(mounts, run);
            // A bind mount's files are an input like COPY's (BuildKit keys them by content); a cache mount's are not.
            var bindSources = mounts.Where(m => m.Type == RunMountType.Bind)
                .Select(m => (Mount: m, Source: ResolveBindSource(m, run))).ToList();
            string network = run.Network is { } asked && asked != "default" ? asked : options.Network ?? "bridge";
            if (network is not ("bridge" or "host" or "none"))
            {
                throw new BuildException($"{run.Location}: RUN --network={network}: choose default, none or host", null);
            }
            var shell = state.Config.Shell ?? [.. DefaultShell];
            List<string> arguments = run.IsHeredocScript ? [.. shell, run.Heredocs[0].Content]
                : run.Command.IsExecForm ? [.. run.Command.ExecArguments]
                : [.. shell, run.Command.ShellText + CanonicalText.Bodies(run.Heredocs)];
            var runEnvironment = scope.RunEnvironment.ToList();
            var buildArgs = runEnvironment.Except(scope.Environment).ToList();
            // podman's (the classic builder's) created_by: "|N NAME=VALUE… /bin/sh -c COMMAND" when ARGs are in scope.
            string createdBy = (buildArgs.Count > 0 ? $"|{buildArgs.Count} {string.Join(' ', buildArgs)} " : "") + string.Join(' ', arguments);
            List<string> inputs = ["env", .. runEnvironment, "network", network];
            foreach (var (mount, source) in bindSources)
            {
                inputs.Add($"bind {mount.Target} {context.ContentDigest([source])}");
            }
            return Cached(state, run, inputs, () =>
            {
                var volumes = new List<string>();
                var tmpfs = new List<string>();
                var environment = new List<string>(runEnvironment);
                string binds = Path.Combine(work, "binds-" + Guid.NewGuid().ToString("N")[..8]);
                // Secrets go to the run-time state directory (a tmpfs under /run, or $XDG_RUNTIME_DIR rootless), never
                // to the store's disk: nothing of them outlives the step (the reference, "RUN --mount=type=secret").
                string secrets = Path.Combine(builder.Engine.Paths.StateRoot, "build-secrets", Guid.NewGuid().ToString("N")[..12]);
                var mountedTargets = new List<RunMount>();
                ContainerRecord record;
                try
                {
                    foreach (var mount in mounts)
                    {
                        string host;
                        if (mount.Type == RunMountType.Tmpfs)
                        {
                            tmpfs.Add(mount.Size is { } size ? $"{mount.Target}:size={size.ToString(CultureInfo.InvariantCulture)}" : mount.Target);
                            mountedTargets.Add(mount);
                            continue;
                        }
                        if (mount.Type == RunMountType.Secret)
                        {
                            if (!options.Secrets.TryGetValue(mount.Id, out var secret))
                            {
                                continue; // not given and not required: the step runs without it, as BuildKit's
                            }
                            host = WriteSecret(secrets, mount, secret, volumes.Count);
                        }
                        else if (mount.Type == RunMountType.Ssh)
                        {
                            host = options.SshAgents[mount.Id];
                            if (!environment.Any(v => v.StartsWith("SSH_AUTH_SOCK=", StringComparison.Ordinal)))
                            {
                                environment.Add("SSH_AUTH_SOCK=" + mount.Target); // BuildKit: the first ssh mount's socket
                            }
                        }
                        else if (mount.Type == RunMountType.Cache)
                        {
                            host = RunMount.CacheDirectory(Store, mount.Id);
                            Directory.CreateDirectory(host);
                        }
                        else
                        {
                            // A copy of the source less what .dockerignore excludes (the context BuildKit sends has
                            // none of it), so that a rw bind's writes are discarded with it.
                            var source = bindSources.First(b => b.Mount == mount).Source;
                            host = Path.Combine(binds, volumes.Count.ToString(CultureInfo.InvariantCulture));
                            Directory.CreateDirectory(host);
                            // Rootless the copy is the user's, which is container root's: no owner to set.
                            using (ContainerPaths.Rootless ? FileCopier.DeferOwners([]) : null)
                            {
                                FileCopier.Copy(host, source.FullPath, source.RelativePath, "/src", new CopyAttributes(), context.IsExcluded);
                            }
                            host = Path.Combine(host, "src");
                        }
                        volumes.Add($"{host}:{mount.Target}:{(mount.ReadOnly ? "ro" : "rw")}");
                        mountedTargets.Add(mount);
                    }
                    record = builder.Engine.Create(new CreateOptions
                    {
                        Image = "nestor-build:" + PlainBuildProgress.ShortId(state.Id),
                        Name = "nestor-build-" + Guid.NewGuid().ToString("N")[..12],
                        Entrypoint = "",
                        Command = arguments,
                        Env = environment,
                        WorkingDir = state.Config.WorkingDir,
                        User = state.Config.User,
                        Network = network,
                        Hostname = "buildkitsandbox",
                        Volumes = volumes,
                        Tmpfs = tmpfs,
                    }, state);
                }
                catch
                {
                    RemoveStepFiles(binds, secrets);
                    throw;
                }
                IReadOnlyList<string> madeForMounts = [];
                try
                {
                    if (state.Config.WorkingDir is { Length: > 0 } || mounts.Count > 0)
                    {
                        // WORKDIR makes its directory (the reference); it lands in this step's layer, as in podman.
                        // Mount targets the state lacks are made by the runtime; noted here so that they are taken
                        // out of the layer afterwards (BuildKit leaves no mount point behind).
                        var layers = record.RootFileSystem;
                        if (ContainerPaths.Rootless)
                        {
                            // Nothing is mounted on the host rootless: the state's files are looked up in its layers
                            // and WORKDIR made in the fresh upper directory (a directory there merges with the lower).
                            var view = new RootlessBuild.LayerView(layers.UpperDirectory, layers.LowerDirectories);
                            madeForMounts = [.. mountedTargets.SelectMany(m => view.MissingPaths(m.Target))];
                            if (state.Config.WorkingDir is { Length: > 0 } directory)
                            {
                                view.MakeDirectories(directory);
                            }
                        }
                        else
                        {
                            MountCalls.Mount("overlay", layers.MergedDirectory, "overlay", MountFlags.None, layers.MountOptions);
                            try
                            {
                                madeForMounts = [.. mountedTargets.SelectMany(m => MissingPaths(layers.MergedDirectory, m.Target))];
                                if (state.Config.WorkingDir is { Length: > 0 } workdir)
                                {
                                    FileCopier.MakeDirectories(layers.MergedDirectory, workdir);
                                }
                            }
                            finally
                            {
                                OverlayMount.Unmount(layers.MergedDirectory);
                            }
                        }
                    }
                    int status = RunToEnd(record);
                    if (status != 0)
                    {
                        throw new BuildException($"{run.Location}: RUN {FirstLine(run.OriginalText[3..].Trim())}: the command exited with status {status}",
                            "fix the command (its output is above); the steps before it stay in the cache")
                        { ExitStatus = status };
                    }
                    foreach (string path in madeForMounts.OrderByDescending(p => p.Length))
                    {
                        string inUpper = Path.Combine(record.RootFileSystem.UpperDirectory, path.TrimStart('/'));
                        if (Directory.Exists(inUpper) && !Directory.EnumerateFileSystemEntries(inUpper).Any())
                        {
                            Directory.Delete(inUpper);
                        }
                        else if (File.Exists(inUpper) && new FileInfo(inUpper).Length == 0)
                        {
                            File.Delete(inUpper); // the empty file the runtime made to bind a secret or socket on
                        }
                    }
                    return WithLayer(state, record.RootFileSystem.UpperDirectory, createdBy);
                }
                finally
                {
                    builder.Engine.Remove(record.Id, force: true);
                    RemoveStepFiles(binds, secrets);
                }
            });
        }

        /// <summary>A RUN's copies of bind sources and its secrets, removed after the step (also when it failed).</summary>
        private static void RemoveStepFiles(string binds, string secrets)
        {
            foreach (string directory in new[] { secrets, binds })
            {
                if (Directory.Exists(directory))
                {
                    Directory.Delete(directory, recursive: true);
                }
            }
        }

        /// <summary>Refuses, before anything runs, a required secret that no <c>--secret</c> gives and an ssh mount
        /// without its <c>--ssh</c> agent socket (there is no agent to forward then).</summary>
        private void CheckSecretsAndAgents(IReadOnlyList<RunMount> mounts, RunInstruction run)
        {
            foreach (var mount in mounts)
            {
                if (mount.Type == RunMountType.Secret && mount.Required && !options.Secrets.ContainsKey(mount.Id))
                {
                    throw new BuildException($"{run.Location}: RUN --mount=type=secret,id={mount.Id}: the secret is required and was not given",
                        $"give it: nestor build --secret id={mount.Id},src=FILE …");
                }
                if (mount.Type == RunMountType.Ssh)
                {
                    if (!options.SshAgents.TryGetValue(mount.Id, out string? socket))
                    {
                        throw new BuildException($"{run.Location}: RUN --mount=type=ssh{(mount.Id == "default" ? "" : ",id=" + mount.Id)}: no SSH agent socket was given for '{mount.Id}'",
                            $"forward one: nestor build --ssh {mount.Id}=$SSH_AUTH_SOCK … (start an agent with eval $(ssh-agent) and ssh-add first)");
                    }
                    if (FileSystemCalls.TryLStat(socket) is not { } status || (status.Mode & 0xf000) != 0xc000)
                    {
                        throw new BuildException($"{run.Location}: RUN --mount=type=ssh: --ssh {mount.Id}={socket} is not a socket",
                            "give the agent's socket (echo $SSH_AUTH_SOCK shows it)");
                    }
                }
            }
        }

        /// <summary>Writes a secret into the step's private directory (0700) with the mount's mode and owner, for a
        /// read-only bind. Rootless, container root is the user: other owners would need a subordinate id.</summary>
        private static string WriteSecret(string directory, RunMount mount, BuildSecret secret, int index)
        {
            Directory.CreateDirectory(directory);
            FileSystemCalls.Chmod(directory, 0x1c0); // 0700, before anything is written into it
            string path = Path.Combine(directory, index.ToString(CultureInfo.InvariantCulture));
            using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
            {
                FileSystemCalls.Chmod(path, 0x180); // 0600 while it is written
                stream.Write(secret.Read());
            }
            FileSystemCalls.Chmod(path, mount.Mode);
            if (mount.Uid != 0 || mount.Gid != 0)
            {
                if (ContainerPaths.Rootless)
                {
                    throw new BuildException($"RUN --mount=type=secret,id={mount.Id},uid={mount.Uid},gid={mount.Gid}: rootless, a secret belongs to container root",
                        "drop uid= and gid=, or build as root");
                }
                FileSystemCalls.LChown(path, mount.Uid, mount.Gid);
            }
            return path;
        }

        /// <summary>The context path a bind mount names (one file or directory; no wildcards).</summary>
        private ContextSource ResolveBindSource(RunMount mount, RunInstruction run)
        {
            try
            {
                var sources = context.Resolve(mount.Source);
                return sources.Count == 1 && sources[0].RelativePath == BuildContext.Clean(mount.Source) ? sources[0]
                    : throw new BuildException($"RUN --mount source={mount.Source}: a bind mount takes one path, not a pattern", "name one file or directory of the context");
            }
            catch (BuildException exception)
            {
                throw new BuildException($"{run.Location}: RUN --mount {exception.Message}", exception.Advice, exception);
            }
        }

        /// <summary>The directories from the topmost missing one down to <paramref name="target"/> that
        /// <paramref name="root"/> lacks (none when the target exists).</summary>
        private static IEnumerable<string> MissingPaths(string root, string target)
        {
            var missing = new List<string>();
            for (string path = target; path.Length > 1; path = Path.GetDirectoryName(path) ?? "/")
            {
                if (FileSystemCalls.TryLStat(Path.Combine(root, path.TrimStart('/'))) is not null)
                {
                    break;
                }
                missing.Add(path);
            }
            return missing;
        }

        /// <summary>Starts the build container with its monitor, relays its output to the progress and returns its
        /// exit status once the monitor has recorded it (and released its mounts).</summary>
        private int RunToEnd(ContainerRecord record)
        {
            var engine = builder.Engine;
            int? status = null;
            try
            {
                using var start = engine.Start(record.Id, attach: true);
                using (var stream = new NetworkStream(start.Attach(AttachProtocol.OutputOnly), ownsSocket: true))
                {
                    while (AttachProtocol.ReadFrame(stream) is { } frame)
                    {
                        if (frame.Type == AttachProtocol.Exit)
                        {
                            status = int.Parse(System.Text.Encoding.ASCII.GetString(frame.Payload), CultureInfo.InvariantCulture);
                            break;
                        }
                        Progress.Output(frame.Payload, frame.Type == AttachProtocol.Stderr);
                    }
                }
                start.WaitStarted();
            }
            catch (ContainerStartException exception)
            {
                Progress.Message("error running the command: " + exception.Message);
                return exception.Status;
            }
            var ended = engine.WaitForExit(record.Id, TimeSpan.FromMinutes(5));
            return status ?? ended?.State.ExitCode ?? 125;
        }

        // ---- COPY and ADD ----

        private StoredImage Copy(StoredImage state, CopyInstruction copy, BuildStage stage, string work)
        {
            foreach (string source in copy.Sources)
            {
                if (source.Contains("://", StringComparison.Ordinal) || source.StartsWith("git@", StringComparison.Ordinal))
                {
                    throw new BuildException($"{copy.Location}: {copy.Keyword} {source}: nestor build fetches no URLs (this machine has no network for builds to download from)",
                        "download the file into the build context and ADD or COPY it from there");
                }
            }
            uint? mode = null;
            if (copy.Chmod is { } chmod)
            {
                try
                {
                    mode = Convert.ToUInt32(chmod, 8) is var parsed && parsed <= 0xfff ? parsed : throw new FormatException();
                }
                catch (Exception exception) when (exception is FormatException or OverflowException or ArgumentException)
                {
                    throw new BuildException($"{copy.Location}: --chmod={chmod} is not an octal mode", "give octal permission bits, e.g. --chmod=755");
                }
            }
            string written = copy.Destination.StartsWith('/') ? copy.Destination
                : (state.Config.WorkingDir ?? "/").TrimEnd('/') + "/" + copy.Destination;
            bool intoDirectory = copy.DestinationIsDirectory || copy.Sources.Count + copy.Heredocs.Count > 1
                || copy.Sources.Any(s => s.IndexOfAny(['*', '?', '[']) >= 0);
            StoredImage? fromImage = null;
            IReadOnlyList<ContextSource> sources = [];
            var inputs = new List<string>();
            if (copy.From is { } fromName)
            {
                fromImage = BuildTarget.ResolveReference(dockerfile, fromName, stage, copy.Location) is { } earlier ? Results[earlier.Index] : ResolveImage(fromName, copy);
                inputs.Add("from " + fromImage.Id);
            }
            else
            {
                sources = [.. copy.Sources.SelectMany(source => Resolve(source, copy))];
                inputs.Add("context " + context.ContentDigest(sources));
            }
            string kind = copy.Sources.Count + copy.Heredocs.Count > 1 ? "multi" : sources.Count == 1 && Directory.Exists(sources[0].FullPath) ? "dir" : "file";
            string contentDigest = Digest.Hex(Digest.Of(System.Text.Encoding.UTF8.GetBytes(string.Join('\n', inputs) + copy.ToCanonicalText())));
            string createdBy = $"/bin/sh -c #(nop) {copy.Keyword} {kind}:{contentDigest} in {copy.Destination} ";
            return Cached(state, copy, inputs, () =>
            {
                string directory = Path.Combine(work, "step-" + Guid.NewGuid().ToString("N")[..8]);
                var root = RootOf(state, directory);
                ContainerRootFileSystem? fromRoot = null;
                // Rootless nothing is mounted on the host: the copy writes into the fresh upper directory, looking the
                // state's directories and links up in its layers, and owners are set afterwards in a user namespace.
                bool rootless = ContainerPaths.Rootless;
                var view = rootless ? new RootlessBuild.LayerView(root.UpperDirectory, root.LowerDirectories) : null;
                var owners = new List<(string Path, uint Uid, uint Gid)>();
                if (!rootless)
                {
                    root.Mount();
                }
                using (rootless ? FileCopier.DeferOwners(owners) : null)
                    try
                    {
                        string merged = rootless ? root.UpperDirectory : root.MergedDirectory;
                        // Rootless, links among the destination's directories (Debian's /bin -> usr/bin) are followed
                        // in the layers here, so that the upper directory gets the real directory, not one that hides the link.
                        string destination = view is null ? written
                            : intoDirectory ? view.ResolveParents(written.TrimEnd('/') + "/.").TrimEnd('/') + "/"
                            : view.ResolveParents(written);
                        var owner = copy.Chown is { } chown ? BundleBuilder.ResolveUser(chown, view is null ? merged : UserDatabaseRoot(view)) : new Runtime.Spec.SpecUser();
                        var attributes = new CopyAttributes(owner.Uid, owner.Gid, mode);
                        if (state.Config.WorkingDir is { Length: > 0 } workdir)
                        {
                            MakeDirectories(merged, view, workdir);
                        }
                        if (intoDirectory)
                        {
                            MakeDirectories(merged, view, destination);
                        }
                        else if (view is not null)
                        {
                            view.MakeDirectories(Path.GetDirectoryName(destination) ?? "/");
                        }
                        Func<string, bool> isDirectory = view is null ? path => Directory.Exists(PathJoin.InRoot(merged, path))
                            : path => view.Find(view.ResolveParents(path)) is { } found && Directory.Exists(found);
                        if (fromImage is not null && rootless)
                        {
                            throw new BuildException($"{copy.Location}: {copy.Keyword} --from={copy.From}: not supported by a rootless nestor build yet (the stage's root would have to be mounted)",
                                "build as root, or copy the files into the build context");
                        }
                        if (fromImage is not null)
                        {
                            fromRoot = RootOf(fromImage, Path.Combine(directory, "from"));
                            fromRoot.Mount();
                            foreach (string source in copy.Sources)
                            {
                                if (source.IndexOfAny(['*', '?', '[']) >= 0)
                                {
                                    throw new BuildException($"{copy.Location}: COPY --from with a wildcard ({source}) is not supported by nestor build", "name the files");
                                }
                                string full = PathJoin.InRoot(fromRoot.MergedDirectory, source);
                                if (FileSystemCalls.TryLStat(full) is null)
                                {
                                    throw new BuildException($"{copy.Location}: COPY --from={copy.From} {source}: no such file or directory in that stage", "check the path in the stage it copies from");
                                }
                                CopyOne(merged, full, "", source, destination, intoDirectory, attributes, _ => false, unpack: false, isDirectory);
                            }
                        }
                        foreach (var source in sources)
                        {
                            CopyOne(merged, source.FullPath, source.RelativePath, source.RelativePath, destination, intoDirectory, attributes,
                                context.IsExcluded, unpack: copy.IsAdd, isDirectory);
                        }
                        foreach (var heredoc in copy.Heredocs)
                        {
                            string path = intoDirectory || copy.Heredocs.Count > 1 ? destination.TrimEnd('/') + "/" + heredoc.Name : destination;
                            string temporary = Path.Combine(directory, "heredoc-" + Guid.NewGuid().ToString("N"));
                            File.WriteAllText(temporary, heredoc.Content);
                            FileSystemCalls.Chmod(temporary, 0x1a4);
                            FileCopier.Copy(merged, temporary, "", path, attributes, _ => false);
                        }
                    }
                    finally
                    {
                        if (fromRoot is not null)
                        {
                            OverlayMount.Unmount(fromRoot.MergedDirectory);
                        }
                        if (!rootless)
                        {
                            OverlayMount.Unmount(root.MergedDirectory);
                        }
                    }
                if (rootless)
                {
                    RootlessBuild.ApplyOwners(owners);
                }
                var next = WithLayer(state, root.UpperDirectory, createdBy);
                if (rootless)
                {
                    RootlessStorage.RemoveTree(directory);
                }
                else
                {
                    Directory.Delete(directory, recursive: true);
                }
                return next;
            });
        }

        /// <summary>WORKDIR's and COPY's directories: in the mounted root, or rootless in the upper directory over the
        /// state's layers.</summary>
        private static void MakeDirectories(string merged, RootlessBuild.LayerView? view, string path)
        {
            if (view is null)
            {
                FileCopier.MakeDirectories(merged, path);
            }
            else
            {
                view.MakeDirectories(path);
            }
        }

        /// <summary>Rootless: where the state's /etc/passwd and /etc/group are (the topmost layer that has them).</summary>
        private static string UserDatabaseRoot(RootlessBuild.LayerView view) =>
            view.Find("/etc/passwd") is { } passwd ? Path.GetDirectoryName(Path.GetDirectoryName(passwd))! : view.Find("/") ?? "/nonexistent";

        private void CopyOne(string merged, string full, string relative, string written, string destination, bool intoDirectory,
            CopyAttributes attributes, Func<string, bool> isExcluded, bool unpack, Func<string, bool> isDirectoryThere)
        {
            bool isDirectory = Directory.Exists(full) && new DirectoryInfo(full).LinkTarget is null;
            if (unpack && !isDirectory && FileCopier.IsArchive(full))
            {
                FileCopier.Unpack(merged, full, destination);
                return;
            }
            string target = destination;
            if (!isDirectory && (intoDirectory || isDirectoryThere(destination)))
            {
                target = destination.TrimEnd('/') + "/" + Path.GetFileName(written.TrimEnd('/'));
            }
            FileCopier.Copy(merged, full, relative, target, attributes, isExcluded);
        }

        private IReadOnlyList<ContextSource> Resolve(string source, CopyInstruction copy)
        {
            try
            {
                return context.Resolve(source);
            }
            catch (BuildException exception)
            {
                throw new BuildException($"{copy.Location}: {copy.Keyword} {exception.Message}", exception.Advice, exception);
            }
        }

        private StoredImage ResolveImage(string reference, CopyInstruction copy)
        {
            return Obtain(reference, $"{copy.Location}: {copy.Keyword} --from={reference} (not a stage before this one)");
        }
    }
}
