namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>What a context path is.</summary>
public enum CopyEntryKind
{
    /// <summary>A regular file.</summary>
    File,
    /// <summary>A directory (created; its contents are separate entries).</summary>
    Directory,
    /// <summary>A symbolic link (copied as a link, not followed).</summary>
    SymbolicLink,
}

/// <summary>One path a COPY or ADD puts into the image.</summary>
/// <param name="ContextPath">The source, relative to the context root, <c>/</c>-separated (<c>.</c> for the root).</param>
/// <param name="DestinationPath">The absolute path in the image.</param>
/// <param name="Kind">File, directory or symbolic link (from lstat).</param>
public sealed record CopyEntry(string ContextPath, string DestinationPath, CopyEntryKind Kind);

/// <summary>Resolves the context sources of an expanded COPY or ADD into the paths it copies, as the Dockerfile
/// reference's COPY rules say: sources are relative to the context root (a leading <c>/</c> too) and may not leave
/// it; wildcards are <see cref="PathPattern"/>s matched against the context's paths; a directory's contents are
/// copied, not the directory itself; several sources (given or from a wildcard) need a destination ending in
/// <c>/</c>; a relative destination is relative to WORKDIR; a source that is missing, excluded by
/// <c>.dockerignore</c>, or a wildcard that matches nothing is an error at the instruction's line. Heredoc sources
/// and ADD's URLs are not context paths: the builder handles them from the instruction.</summary>
public static class CopySources
{
    /// <summary>True for an ADD source that is a URL or a Git address rather than a context path.</summary>
    public static bool IsRemote(string source) =>
        source.StartsWith("http://", StringComparison.OrdinalIgnoreCase)
        || source.StartsWith("https://", StringComparison.OrdinalIgnoreCase)
        || source.StartsWith("git@", StringComparison.Ordinal);

    /// <summary>The entries <paramref name="copy"/> (expanded, without <c>--from</c>) copies from
    /// <paramref name="contextDirectory"/>, in order: for each source, its matches in ordinal order, a
    /// directory's own entry before its contents. <paramref name="workingDirectory"/> is the stage's WORKDIR.</summary>
    public static IReadOnlyList<CopyEntry> Plan(string contextDirectory, CopyInstruction copy, DockerIgnore ignore,
        string workingDirectory = "/")
    {
        var listing = ignore.ListContext(contextDirectory);
        var listed = new HashSet<string>(listing, StringComparer.Ordinal);
        var entries = new List<CopyEntry>();
        var matchesBySource = new List<(string Source, List<string> Paths)>();
        foreach (string source in copy.Sources)
        {
            if (IsRemote(source))
            {
                throw new DockerfileException(copy.Location, $"{copy.Keyword} {source}: a URL is not a context path",
                    "download the file into the build context and COPY it");
            }
            matchesBySource.Add((source, Match(copy, source, listing, listed)));
        }
        int total = matchesBySource.Sum(m => m.Paths.Count) + copy.Heredocs.Count;
        string destination = copy.Destination;
        if (!destination.StartsWith('/'))
        {
            destination = workingDirectory.TrimEnd('/') + "/" + destination;
        }
        bool intoDirectory = copy.DestinationIsDirectory || destination.EndsWith("/.", StringComparison.Ordinal);
        if (total > 1 && !intoDirectory)
        {
            throw new DockerfileException(copy.Location,
                $"{copy.Keyword} copies {total} sources into '{copy.Destination}', which does not end in '/'",
                $"when several sources are copied the destination is a directory: write {copy.Destination}/");
        }
        string destinationRoot = DockerIgnore.Clean(destination);
        foreach (var (_, paths) in matchesBySource)
        {
            foreach (string path in paths)
            {
                var kind = KindOf(Path.Combine(contextDirectory, path));
                if (kind == CopyEntryKind.Directory)
                {
                    // The directory's contents go to the destination; the destination directory itself is made.
                    entries.Add(new CopyEntry(path, destinationRoot, CopyEntryKind.Directory));
                    string prefix = path == "." ? "" : path + "/";
                    foreach (string inner in listing.Where(p => p.StartsWith(prefix, StringComparison.Ordinal) && p != path))
                    {
                        entries.Add(new CopyEntry(inner, Join(destinationRoot, inner[prefix.Length..]),
                            KindOf(Path.Combine(contextDirectory, inner))));
                    }
                }
                else
                {
                    string name = path[(path.LastIndexOf('/') + 1)..];
                    entries.Add(new CopyEntry(path, intoDirectory ? Join(destinationRoot, name) : destinationRoot, kind));
                }
            }
        }
        return entries;
    }

    private static List<string> Match(CopyInstruction copy, string source, IReadOnlyList<string> listing,
        HashSet<string> listed)
    {
        string relative = DockerIgnore.Clean(source.TrimStart('/'));
        if (relative == ".." || relative.StartsWith("../", StringComparison.Ordinal))
        {
            throw new DockerfileException(copy.Location, $"{copy.Keyword} {source}: the path is outside the build context",
                "sources are paths inside the context directory; move the file into it");
        }
        PathPattern pattern;
        try
        {
            pattern = PathPattern.Parse(relative);
        }
        catch (FormatException e)
        {
            throw new DockerfileException(copy.Location, $"{copy.Keyword} {source}: {e.Message}",
                "quote a literal '[' with a backslash", e);
        }
        if (!pattern.HasWildcards)
        {
            if (relative == "." || listed.Contains(relative))
            {
                return [relative];
            }
            throw new DockerfileException(copy.Location,
                $"{copy.Keyword} {source}: not found in the build context (or excluded by .dockerignore)",
                "check the path (it is relative to the context directory) and the .dockerignore file");
        }
        var matches = listing.Where(pattern.IsMatch).ToList();
        // A match inside a matched directory is copied with the directory already.
        var matched = new HashSet<string>(matches, StringComparer.Ordinal);
        matches.RemoveAll(m => Ancestors(m).Any(matched.Contains));
        if (matches.Count == 0)
        {
            throw new DockerfileException(copy.Location,
                $"{copy.Keyword} {source}: no file in the build context matches",
                "check the pattern (it is relative to the context directory) and the .dockerignore file");
        }
        return matches;
    }

    private static IEnumerable<string> Ancestors(string path)
    {
        for (int slash = path.LastIndexOf('/'); slash > 0; slash = path.LastIndexOf('/', slash - 1))
        {
            yield return path[..slash];
        }
    }

    private static CopyEntryKind KindOf(string path)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is not null)
        {
            return CopyEntryKind.SymbolicLink;
        }
        return Directory.Exists(path) ? CopyEntryKind.Directory : CopyEntryKind.File;
    }

    private static string Join(string directory, string name) =>
        directory == "/" ? "/" + name : directory + "/" + name;
}
