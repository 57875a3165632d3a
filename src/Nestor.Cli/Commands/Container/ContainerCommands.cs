using System.CommandLine;

namespace Nestor.Cli.Commands.Container;

/// <summary>The OS-level virtualization commands: <c>nestor container</c> (the daemonless engine, Docker's command
/// line), <c>nestor image</c> (the image store), <c>nestor oci</c> (Nestor's own OCI runtime, runc's command line) and
/// <c>nestor chroot</c>.</summary>
internal static class ContainerCommands
{
    public static IEnumerable<Command> Create() =>
    [
        ContainerCommand.Create(),
        ImageCommand.Create(),
        OciCommand.Create(),
        ChrootCommand.Create(),
        BuildCommand.Create(),
    ];

    /// <summary>Processes Nestor starts for itself (a container's init inside its new namespaces, a container's
    /// monitor) are entered here before the command tree is built: they are not user commands, and start-up time
    /// counts in every <c>container run</c>. Returns null when <paramref name="args"/> is a user command.</summary>
    public static int? RunInternal(string[] args) => args.Length == 0 ? null : args[0] switch
    {
        OciCommand.InitVerb => OciCommand.RunInit(args),
        ContainerCommand.MonitorVerb => ContainerCommand.RunMonitor(args),
        Nestor.Containers.Engine.RootlessStorage.LayerDiffVerb => Nestor.Containers.Engine.RootlessStorage.RunLayerDiff(args),
        _ => null,
    };
}
