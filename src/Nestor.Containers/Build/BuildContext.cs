using System.Security.Cryptography;
using System.Text;
using Nestor.Containers.Build.Dockerfiles;
using Nestor.Host;

namespace Nestor.Containers.Build;

/// <summary>A file or directory of the build context that a COPY or ADD names: its path relative to the context
/// (slash-separated, no leading <c>./</c>) and on the host.</summary>
public sealed record ContextSource(string RelativePath, string FullPath);

/// <summary>The build context: the directory COPY and ADD read from, less what <c>.dockerignore</c> excludes. Sources
/// are resolved inside it (<c>..</c> never leaves it, as the Dockerfile reference requires). Both the ignore rules and
/// the wildcards of sources are <see cref="PathPattern"/>s, the one matcher of the build (Go's <c>filepath.Match</c>:
/// <c>*</c>, <c>?</c>, <c>[…]</c> within one path component, plus <c>**</c> across components, as Docker's
/// patternmatcher), and exclusion is <see cref="DockerIgnore"/>'s (the last matching rule decides, parents count).</summary>
public sealed class BuildContext
{
    /// <param name="directory">The context directory.</param>
    /// <param name="ignore">What the context's ignore file excludes.</param>
    public BuildContext(string directory, DockerIgnore ignore)
    {
        Directory = Path.GetFullPath(directory);
        Ignore = ignore;
    }

    /// <param name="directory">The context directory.</param>
    /// <param name="ignorePatterns">The lines of <c>.dockerignore</c> (comments and blank lines are skipped).</param>
    public BuildContext(string directory, IEnumerable<string> ignorePatterns)
        : this(directory, ParseIgnore(ignorePatterns))
    {
    }

    /// <summary>The context directory (absolute).</summary>
    public string Directory { get; }

    /// <summary>The ignore rules in force.</summary>
    public DockerIgnore Ignore { get; }

    private static DockerIgnore ParseIgnore(IEnumerable<string> lines)
    {
        try
        {
            return DockerIgnore.Parse(string.Join('\n', lines));
        }
        catch (DockerfileException exception)
        {
            throw new BuildException(exception.Message, exception.Advice, exception);
        }
    }

    /// <summary>Opens <paramref name="directory"/> as a context with its ignore file, if it has one: BuildKit's
    /// <c>DOCKERFILE.dockerignore</c> beside <paramref name="dockerfilePath"/> first, else <c>.dockerignore</c> at the
    /// context's root (<see cref="DockerIgnore.Load"/>). A malformed pattern is a <see cref="DockerfileException"/>
    /// naming the ignore file and line.</summary>
    public static BuildContext Open(string directory, string? dockerfilePath = null)
    {
        if (!System.IO.Directory.Exists(directory))
        {
            throw new BuildException($"the build context {directory} is not a directory", "give the directory whose files the Dockerfile copies, e.g. 'nestor build -t NAME .'");
        }
        return new BuildContext(directory, DockerIgnore.Load(directory, dockerfilePath));
    }

    /// <summary>Whether the ignore file leaves <paramref name="relativePath"/> out: the last rule matching the path
    /// or one of its parent directories decides (a <c>!</c> rule takes it back in).</summary>
    public bool IsExcluded(string relativePath) => Ignore.Patterns.Count > 0 && Ignore.IsExcluded(relativePath);

    /// <summary>The context entries <paramref name="pattern"/> names: the path itself, or with wildcards every
    /// matching path that is not excluded, in ordinal order (an entry inside a matched directory comes with its
    /// directory, not again by itself). None is an error.</summary>
    public IReadOnlyList<ContextSource> Resolve(string pattern)
    {
        string cleaned = Clean(pattern);
        if (cleaned.StartsWith("../", StringComparison.Ordinal) || cleaned == "..")
        {
            throw new BuildException($"{pattern} is outside the build context", "COPY and ADD read only files inside the context directory; move the file there");
        }
        PathPattern compiled;
        try
        {
            compiled = PathPattern.Parse(cleaned);
        }
        catch (FormatException exception)
        {
            throw new BuildException($"{pattern}: {exception.Message}", "close the [...] class, or quote a literal '[' with a backslash", exception);
        }
        if (!compiled.HasWildcards)
        {
            string literal = Unquote(cleaned);
            string full = literal.Length == 0 ? Directory : Path.Combine(Directory, literal);
            if (FileSystemCalls.TryLStat(full) is null || (literal.Length > 0 && IsExcluded(literal)))
            {
                throw new BuildException($"{pattern}: no such file or directory in the build context {Directory} (or .dockerignore excludes it)",
                    "check the path relative to the context directory, and .dockerignore");
            }
            return [new ContextSource(literal, full)];
        }
        var matched = Ignore.ListContext(Directory).Where(compiled.IsMatch).ToHashSet(StringComparer.Ordinal);
        var matches = matched.Where(path => !Ancestors(path).Any(matched.Contains)).Order(StringComparer.Ordinal)
            .Select(path => new ContextSource(path, Path.Combine(Directory, path))).ToList();
        if (matches.Count == 0)
        {
            throw new BuildException($"{pattern}: no file in the build context {Directory} matches", "check the pattern and .dockerignore");
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

    /// <summary>A pattern without wildcards names a path: its backslashes only quote the next character.</summary>
    private static string Unquote(string pattern)
    {
        if (!pattern.Contains('\\'))
        {
            return pattern;
        }
        var text = new StringBuilder(pattern.Length);
        for (int i = 0; i < pattern.Length; i++)
        {
            text.Append(pattern[i] == '\\' && i + 1 < pattern.Length ? pattern[++i] : pattern[i]);
        }
        return text.ToString();
    }

    /// <summary>The content digest of <paramref name="sources"/> for the cache: for each entry (directories walked,
    /// excluded entries skipped) its path relative to the context, type, permission bits, and the SHA-256 of a
    /// file's contents or a link's target. Modification times and owners are left out, as BuildKit leaves them out.</summary>
    public string ContentDigest(IEnumerable<ContextSource> sources)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var source in sources)
        {
            AppendEntry(hash, source.RelativePath, source.FullPath);
        }
        return Images.Digest.Sha256Prefix + Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private void AppendEntry(IncrementalHash hash, string relative, string full)
    {
        var stat = FileSystemCalls.LStat(full);
        uint type = stat.Mode & FileSystemCalls.S_IFMT;
        string line = $"{relative.Length}:{relative} {type:x} {Convert.ToString(stat.Mode & 0xfff, 8)}";
        switch (type)
        {
            case FileSystemCalls.S_IFREG:
                using (var file = File.OpenRead(full))
                {
                    line += " " + Convert.ToHexStringLower(SHA256.HashData(file));
                }
                break;
            case FileSystemCalls.S_IFLNK:
                line += " -> " + new FileInfo(full).LinkTarget;
                break;
        }
        hash.AppendData(Encoding.UTF8.GetBytes(line + "\n"));
        if (type == FileSystemCalls.S_IFDIR)
        {
            foreach (string entry in System.IO.Directory.EnumerateFileSystemEntries(full).Select(Path.GetFileName).Cast<string>().Order(StringComparer.Ordinal))
            {
                string inner = relative.Length == 0 ? entry : relative + "/" + entry;
                if (!IsExcluded(inner))
                {
                    AppendEntry(hash, inner, Path.Combine(full, entry));
                }
            }
        }
    }

    /// <summary>A path cleaned as Go's <c>filepath.Clean</c> would, relative: no leading <c>/</c> or <c>./</c>, no
    /// empty or <c>.</c> components, <c>..</c> folded.</summary>
    public static string Clean(string path)
    {
        var parts = new List<string>();
        foreach (string part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            if (part == ".")
            {
                continue;
            }
            if (part == ".." && parts.Count > 0 && parts[^1] != "..")
            {
                parts.RemoveAt(parts.Count - 1);
            }
            else
            {
                parts.Add(part);
            }
        }
        return string.Join('/', parts);
    }
}
