using System.CommandLine;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor oci …</c>: placeholder until the runtime lands.</summary>
internal static class OciCommand
{
    public const string InitVerb = "__container-init";

    public static Command Create() => new("oci", "Nestor's own OCI runtime (runc's command line)");

    public static int RunInit(string[] args) => 125;
}
