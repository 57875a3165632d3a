namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>One <c>.dockerignore</c> line: a cleaned pattern, whether it is an exception (<c>!</c>), its line.</summary>
public sealed record IgnorePattern(PathPattern Pattern, bool IsException, int Line);

/// <summary>A <c>.dockerignore</c> file: which context paths the build does not see. Each line is a
/// <see cref="PathPattern"/> (Go's filepath.Match plus <c>**</c>), cleaned as Go's filepath.Clean does with a
/// leading <c>/</c> removed (so <c>/a</c>, <c>./a</c> and <c>a</c> are the same); lines starting with <c>#</c> are
/// comments; <c>!</c> makes an exception. Patterns apply in order and the last one that matches decides. A pattern
/// also matches every path under a directory it matches (<c>docs</c> excludes <c>docs/a.md</c>). The Dockerfile
/// and the <c>.dockerignore</c> file are still read by the build even when excluded; COPY and ADD do not see them.</summary>
public sealed class DockerIgnore
{
    /// <summary>The file name Docker reads at the context's root.</summary>
    public const string FileName = ".dockerignore";

    private DockerIgnore(IReadOnlyList<IgnorePattern> patterns)
    {
        Patterns = patterns;
    }

    /// <summary>An ignore file that excludes nothing.</summary>
    public static DockerIgnore None { get; } = new([]);

    /// <summary>The patterns in file order.</summary>
    public IReadOnlyList<IgnorePattern> Patterns { get; }

    /// <summary>Parses the text of an ignore file; <paramref name="fileName"/> names it in errors (a malformed
    /// character class is a <see cref="DockerfileException"/> at its line).</summary>
    public static DockerIgnore Parse(string text, string fileName = FileName)
    {
        var patterns = new List<IgnorePattern>();
        string[] lines = text.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n');
        for (int index = 0; index < lines.Length; index++)
        {
            string line = lines[index];
            if (line.StartsWith('#'))
            {
                continue;
            }
            string pattern = line.Trim();
            if (pattern.Length == 0)
            {
                continue;
            }
            bool exception = pattern[0] == '!';
            if (exception)
            {
                pattern = pattern[1..].Trim();
            }
            pattern = Clean(pattern);
            if (pattern.Length > 1 && pattern[0] == '/')
            {
                pattern = pattern[1..];
            }
            try
            {
                patterns.Add(new IgnorePattern(PathPattern.Parse(pattern), exception, index + 1));
            }
            catch (FormatException e)
            {
                throw new DockerfileException(new SourceLocation(fileName, index + 1), e.Message,
                    "close the [...] class or quote the '[' with a backslash", e);
            }
        }
        return new DockerIgnore(patterns);
    }

    /// <summary>The context's ignore file: <c>&lt;Dockerfile name&gt;.dockerignore</c> next to the Dockerfile when
    /// it exists (BuildKit's per-Dockerfile ignore file), else <c>.dockerignore</c> at the context root, else none.</summary>
    public static DockerIgnore Load(string contextDirectory, string? dockerfilePath = null)
    {
        if (dockerfilePath is not null)
        {
            string specific = dockerfilePath + FileName;
            if (File.Exists(specific))
            {
                return Parse(File.ReadAllText(specific), specific);
            }
        }
        string path = Path.Combine(contextDirectory, FileName);
        return File.Exists(path) ? Parse(File.ReadAllText(path), path) : None;
    }

    /// <summary>True when <paramref name="relativePath"/> (relative to the context root, <c>/</c>-separated) is
    /// excluded.</summary>
    public bool IsExcluded(string relativePath)
    {
        string path = Clean(relativePath).TrimStart('/');
        if (path is "" or ".")
        {
            return false;
        }
        string[] parts = path.Split('/');
        bool excluded = false;
        foreach (var entry in Patterns)
        {
            if (excluded == !entry.IsException)
            {
                continue; // this pattern cannot change the answer
            }
            bool match = entry.Pattern.IsMatch(path);
            if (!match && parts.Length > 1)
            {
                // The pattern may match a directory above the path.
                for (int length = 1; length < parts.Length && !match; length++)
                {
                    match = entry.Pattern.IsMatch(string.Join('/', parts, 0, length));
                }
            }
            if (match)
            {
                excluded = !entry.IsException;
            }
        }
        return excluded;
    }

    /// <summary>True when some exception pattern might re-include a path under an excluded directory, so the
    /// directory must still be walked.</summary>
    public bool HasExceptions => Patterns.Any(p => p.IsException);

    /// <summary>The context paths COPY and ADD see, relative and <c>/</c>-separated, sorted ordinally: every file,
    /// directory and symbolic link under <paramref name="contextDirectory"/> that is not excluded (an excluded
    /// directory is not descended into unless an exception pattern could match inside it).</summary>
    public IReadOnlyList<string> ListContext(string contextDirectory)
    {
        var result = new List<string>();
        Walk(contextDirectory, "", result);
        result.Sort(StringComparer.Ordinal);
        return result;
    }

    private void Walk(string directory, string prefix, List<string> result)
    {
        foreach (var entry in new DirectoryInfo(directory).EnumerateFileSystemInfos())
        {
            string relative = prefix + entry.Name;
            bool excluded = IsExcluded(relative);
            if (!excluded)
            {
                result.Add(relative);
            }
            bool isDirectory = entry is DirectoryInfo && entry.LinkTarget is null;
            if (isDirectory && (!excluded || HasExceptions))
            {
                Walk(entry.FullName, relative + "/", result);
            }
        }
    }

    /// <summary>Go's filepath.Clean for <c>/</c>-separated paths: repeated and trailing slashes, <c>.</c> segments
    /// and <c>name/..</c> pairs removed; a rooted path stays rooted; an empty path is <c>.</c>.</summary>
    public static string Clean(string path)
    {
        bool rooted = path.StartsWith('/');
        var parts = new List<string>();
        foreach (string part in path.Split('/'))
        {
            if (part is "" or ".")
            {
                continue;
            }
            if (part == ".." && parts.Count > 0 && parts[^1] != "..")
            {
                parts.RemoveAt(parts.Count - 1);
            }
            else if (part == ".." && rooted)
            {
                continue;
            }
            else
            {
                parts.Add(part);
            }
        }
        string joined = string.Join('/', parts);
        return rooted ? "/" + joined : joined.Length == 0 ? "." : joined;
    }
}
