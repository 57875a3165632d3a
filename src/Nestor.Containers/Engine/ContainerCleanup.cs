using Nestor.Containers.Network;
using Nestor.Containers.Runtime;
using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary>What ending a container releases, done by its monitor or, when the monitor died, by the next command that
/// notices: the runtime's container (its cgroup and state), the network attachment, the root's overlay mount.</summary>
public static class ContainerCleanup
{
    public static void Release(ContainerRecord record, IContainerRuntime runtime, IContainerNetwork? network, bool runtimeKnowsIt = true)
    {
        if (runtimeKnowsIt)
        {
            try
            {
                runtime.Delete(record.Id, force: true);
            }
            catch (ContainerRuntimeException)
            {
                // Already gone from the runtime (deleted by an earlier cleanup, or never created).
            }
        }
        if (record.Network is { } attachment && network is not null)
        {
            network.Detach(attachment);
        }
        string merged = record.RootFileSystem.MergedDirectory;
        if (merged.Length > 0 && ProcessFacts.IsMountPoint(merged))
        {
            MountCalls.TryUnmountDetached(merged);
        }
    }
}
