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
        string inside = Resolve(path, candidate => new FileInfo(Path.Combine(root, candidate.TrimStart('/'))).LinkTarget, followLast);
        return inside == "/" ? root : Path.Combine(root, inside.TrimStart('/'));
    }

    /// <summary>The walk behind <see cref="InRoot"/>, over any tree that can say what a path's symbolic link points
    /// at (a directory, or a build's stack of layers): <c>.</c> is dropped, <c>..</c> stops at <c>/</c>, a link's
    /// target replaces it (from <c>/</c> when absolute), at most 255 links as Linux's path walk allows
    /// (path_resolution(7): ELOOP past 40 nested, a fixed total beyond that).</summary>
    /// <param name="linkTarget">The target of the link at an absolute path inside the tree, null when that path
    /// is not a link (or does not exist).</param>
    /// <returns>The resolved path, absolute inside the tree.</returns>
    public static string Resolve(string path, Func<string, string?> linkTarget, bool followLast = true)
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
            parts.Add(part);
            if ((followLast || pending.Count > 0) && linkTarget("/" + string.Join('/', parts)) is { } target)
            {
                parts.RemoveAt(parts.Count - 1);
                if (++links > 255)
                {
                    throw new ContainerRuntimeException($"too many symbolic links resolving {path}");
                }
                if (target.StartsWith('/'))
                {
                    parts.Clear();
                }
                foreach (string next in target.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse())
                {
                    pending.Push(next);
                }
            }
        }
        return "/" + string.Join('/', parts);
    }
}
