using Nestor.Host;

namespace Nestor.Containers.Network;

/// <summary>Which network a container engine uses: the bridge for root, slirp4netns for everyone else (Podman's rule:
/// an unprivileged user cannot make interfaces or NAT rules in the host's network namespace).</summary>
public static class ContainerNetworks
{
    /// <summary><see cref="BridgeNetwork"/> with the default options when this process runs as root, otherwise
    /// <see cref="SlirpNetwork"/> with its state under the user's runtime directory.</summary>
    public static IContainerNetwork ForCurrentUser() =>
        RootDirectoryCalls.EffectiveUserId == 0 ? new BridgeNetwork() : new SlirpNetwork(SlirpNetworkOptions.ForCurrentUser());
}
