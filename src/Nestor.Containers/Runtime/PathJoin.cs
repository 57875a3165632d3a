namespace Nestor.Containers.Runtime;

/// <summary>Resolves a path inside a root file system as the container will see it: symbolic links are followed
/// relative to <c>root</c> and <c>..</c> stops at it, so a mount destination such as <c>/etc/x -> /../../host</c>
/// in an image cannot place a mount outside the container's root.</summary>
internal static class PathJoin
{
    /// <param name="followLast">Whether a symbolic link in the last component is followed too (a mount
    /// destination: yes); <c>cp</c> into a container names the link itself (no).</param>
    public static string InRoot(string root, string path, bool followLast = true)
    {
        var parts = new List<string>();
        var pending = new Stack<string>(path.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse());
        int links = 0;
        while (pending.Count > 0)
        {
            string part = pending.Pop();
            if (part == ".")
            {
                continue;
            }
            if (part == "..")
            {
                if (parts.Count > 0)
                {
                    parts.RemoveAt(parts.Count - 1);
                }
                continue;
            }
            string candidate = Path.Combine(root, string.Join('/', parts), part);
            var info = new FileInfo(candidate);
            if (info.LinkTarget is { } target && (followLast || pending.Count > 0))
            {
                if (++links > 255)
                {
                    throw new ContainerRuntimeException($"too many symbolic links resolving {path} in {root}");
                }
                if (target.StartsWith('/'))
                {
                    parts.Clear();
                }
                foreach (string next in target.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse())
                {
                    pending.Push(next);
                }
                continue;
            }
            parts.Add(part);
        }
        return parts.Count == 0 ? root : Path.Combine(root, string.Join('/', parts));
    }
}
