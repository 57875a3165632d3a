namespace Nestor.Containers.Runtime;

/// <summary>How <see cref="NestorRuntime"/> and the container's init (<c>nestor __container-init</c>) talk. The init
/// gets: <c>__container-init create STATE-DIR BUNDLE SYNC-FD REPORT-FD CONSOLE-FD</c>. It writes lines to REPORT-FD
/// (<c>hooks</c>: the container is set up to just before pivot_root, so the runtime runs prestart and createRuntime
/// hooks; <c>created</c>; <c>error TEXT</c>), and reads one byte from SYNC-FD after <c>hooks</c>. After
/// <c>created</c> it blocks opening the exec FIFO for writing until <c>start</c> opens it for reading (runc's
/// exec.fifo); it then writes <see cref="StartedByte"/> to the FIFO and, should anything fail before the user's
/// program is executed, an error text; the FIFO's close-on-exec descriptor closing is the sign that execve
/// succeeded.</summary>
internal static class InitProtocol
{
    public const string CreateMode = "create";
    public const string ExecMode = "exec";
    public const string HooksLine = "hooks";
    public const string CreatedLine = "created";
    public const string ErrorPrefix = "error ";
    public const byte StartedByte = (byte)'0';
    public const byte ContinueByte = (byte)'h';
}
