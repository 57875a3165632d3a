namespace Nestor.Containers.Cgroups;

/// <summary>A control-group operation failed; the message says which file and value, and what to do.</summary>
public class ControlGroupException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>No control group can be made or written here (typically rootless without a delegated cgroup), or a
/// controller a limit needs is not available. A runtime without limits to set may go on without a cgroup.</summary>
public sealed class ControlGroupUnavailableException(string message, Exception? inner = null) : ControlGroupException(message, inner);
