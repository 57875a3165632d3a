using Nestor.Containers.Images;
using Nestor.Host;

namespace Nestor.Containers.Storage;

/// <summary>Mounts a container's overlay root (overlayfs.rst): the image's unpacked layers as lower directories, the
/// container's upper and work directories. Rootless, the mount is made inside the caller's user namespace with
/// <c>userxattr</c>, so overlayfs reads <c>user.overlay.*</c> instead of <c>trusted.overlay.*</c> (which only
/// CAP_SYS_ADMIN in the initial namespace may set).</summary>
public static class OverlayMount
{
    /// <summary>Mounts <paramref name="root"/> at its merged directory with mount(2).</summary>
    public static void Mount(ContainerRootFileSystem root, bool rootless)
    {
        string options = root.MountOptions + (rootless ? ",userxattr" : "");
        MountCalls.Mount("overlay", root.MergedDirectory, "overlay", MountFlags.None, options);
    }

    /// <summary>Unmounts an overlay mounted by <see cref="Mount"/> (lazily if <paramref name="detach"/>).</summary>
    public static void Unmount(string mergedDirectory, bool detach = false) => MountCalls.Unmount(mergedDirectory, detach ? MountCalls.DetachFlag : 0);
}
