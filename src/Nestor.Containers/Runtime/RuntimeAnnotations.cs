namespace Nestor.Containers.Runtime;

/// <summary>The config.json annotations Nestor's runtime honours (config.md "Annotations": implementations may use
/// reverse-domain keys of their own; other runtimes ignore them).</summary>
public static class RuntimeAnnotations
{
    /// <summary>overlayfs(5) mount options for the container's root. When present, the runtime's init mounts an
    /// overlay with these options on <c>root.path</c> inside the container's user and mount namespaces, before it
    /// prepares the root: an unprivileged user cannot mount overlayfs on the host, but may in a user namespace it owns
    /// (user_namespaces(7), overlayfs in a user namespace since Linux 5.11; rootless options carry
    /// <c>userxattr</c>).</summary>
    public const string RootOverlay = "org.nestor.rootfs.overlay";
}
