using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Nestor.Host;

namespace Nestor.Containers.Build;

/// <summary>A file or directory of the build context that a COPY or ADD names: its path relative to the context
/// (slash-separated, no leading <c>./</c>) and on the host.</summary>
public sealed record ContextSource(string RelativePath, string FullPath);

/// <summary>The build context: the directory COPY and ADD read from, less what <c>.dockerignore</c> excludes. Sources
/// are resolved inside it (<c>..</c> never leaves it, as the Dockerfile reference requires), wildcards match by Go's
/// <c>filepath.Match</c> rules (<c>*</c>, <c>?</c>, <c>[…]</c>, one path component each) and <c>**</c> spans
/// components as in <c>.dockerignore</c>.</summary>
public sealed class BuildContext
{
    private readonly List<(Regex Pattern, bool Exception)> ignoreRules;

    /// <param name="directory">The context directory.</param>
    /// <param name="ignorePatterns">The lines of <c>.dockerignore</c> (comments and blank lines are skipped).</param>
    public BuildContext(string directory, IEnumerable<string> ignorePatterns)
    {
        Directory = Path.GetFullPath(directory);
        ignoreRules = [];
        foreach (string line in ignorePatterns)
        {
            string pattern = line.Trim();
            if (pattern.Length == 0 || pattern.StartsWith('#'))
            {
                continue;
            }
            bool exception = pattern.StartsWith('!');
            pattern = Clean(exception ? pattern[1..].Trim() : pattern);
            if (pattern.Length > 0)
            {
                ignoreRules.Add((GlobRegex(pattern), exception));
            }
        }
    }

    /// <summary>The context directory (absolute).</summary>
    public string Directory { get; }

    /// <summary>Opens <paramref name="directory"/> as a context with its <c>.dockerignore</c>, if it has one.</summary>
    public static BuildContext Open(string directory)
    {
        if (!System.IO.Directory.Exists(directory))
        {
            throw new BuildException($"the build context {directory} is not a directory", "give the directory whose files the Dockerfile copies, e.g. 'nestor build -t NAME .'");
        }
        string ignore = Path.Combine(directory, ".dockerignore");
        return new BuildContext(directory, File.Exists(ignore) ? File.ReadAllLines(ignore) : []);
    }

    /// <summary>Whether <c>.dockerignore</c> leaves <paramref name="relativePath"/> out: the last rule matching the path
    /// or one of its parent directories decides (a <c>!</c> rule takes it back in).</summary>
    public bool IsExcluded(string relativePath)
    {
        if (ignoreRules.Count == 0)
        {
            return false;
        }
        relativePath = Clean(relativePath);
        bool excluded = false;
        foreach (var (pattern, exception) in ignoreRules)
        {
            if (MatchesSelfOrParent(pattern, relativePath))
            {
                excluded = !exception;
            }
        }
        return excluded;
    }

    private static bool MatchesSelfOrParent(Regex pattern, string path)
    {
        for (int end = path.Length; end > 0; end = path.LastIndexOf('/', end - 1))
        {
            if (pattern.IsMatch(path[..end]))
            {
                return true;
            }
            if (end <= 0)
            {
                break;
            }
        }
        return false;
    }

    /// <summary>The context entries <paramref name="pattern"/> names: the path itself, or with wildcards every
    /// matching path, in ordinal order; excluded entries are not there. None is an error.</summary>
    public IReadOnlyList<ContextSource> Resolve(string pattern)
    {
        string cleaned = Clean(pattern);
        if (cleaned.StartsWith("../", StringComparison.Ordinal) || cleaned == "..")
        {
            throw new BuildException($"{pattern} is outside the build context", "COPY and ADD read only files inside the context directory; move the file there");
        }
        if (cleaned.IndexOfAny(['*', '?', '[']) < 0)
        {
            string full = cleaned.Length == 0 ? Directory : Path.Combine(Directory, cleaned);
            if (FileSystemCalls.TryLStat(full) is null || (cleaned.Length > 0 && IsExcluded(cleaned)))
            {
                throw new BuildException($"{pattern}: no such file or directory in the build context {Directory} (or .dockerignore excludes it)",
                    "check the path relative to the context directory, and .dockerignore");
            }
            return [new ContextSource(cleaned, full)];
        }
        var regex = GlobRegex(cleaned, spanDirectories: false);
        var matches = Walk("").Where(path => regex.IsMatch(path)).Order(StringComparer.Ordinal)
            .Select(path => new ContextSource(path, Path.Combine(Directory, path))).ToList();
        if (matches.Count == 0)
        {
            throw new BuildException($"{pattern}: no file in the build context {Directory} matches", "check the pattern and .dockerignore");
        }
        return matches;
    }

    /// <summary>Every entry below <paramref name="relative"/> that is not excluded (an excluded directory is still
    /// walked: a <c>!</c> rule may take something inside it back).</summary>
    private IEnumerable<string> Walk(string relative)
    {
        string full = relative.Length == 0 ? Directory : Path.Combine(Directory, relative);
        foreach (string entry in System.IO.Directory.EnumerateFileSystemEntries(full).Order(StringComparer.Ordinal))
        {
            string path = relative.Length == 0 ? Path.GetFileName(entry) : relative + "/" + Path.GetFileName(entry);
            if (!IsExcluded(path))
            {
                yield return path;
            }
            if ((FileSystemCalls.LStat(entry).Mode & FileSystemCalls.S_IFMT) == FileSystemCalls.S_IFDIR)
            {
                foreach (string inner in Walk(path))
                {
                    yield return inner;
                }
            }
        }
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

    /// <summary>A glob as a regular expression: <c>*</c> and <c>?</c> within one component, <c>[…]</c> a class
    /// (<c>^</c> negating it, as Go's), <c>**</c> any number of components (in .dockerignore), a backslash escaping
    /// the next character.</summary>
    private static Regex GlobRegex(string pattern, bool spanDirectories = true)
    {
        var text = new StringBuilder("^");
        for (int i = 0; i < pattern.Length; i++)
        {
            char c = pattern[i];
            switch (c)
            {
                case '*' when spanDirectories && i + 1 < pattern.Length && pattern[i + 1] == '*':
                    i++;
                    if (i + 1 < pattern.Length && pattern[i + 1] == '/')
                    {
                        i++;
                        text.Append("(.*/)?");
                    }
                    else
                    {
                        text.Append(".*");
                    }
                    break;
                case '*':
                    text.Append("[^/]*");
                    break;
                case '?':
                    text.Append("[^/]");
                    break;
                case '[':
                    int close = pattern.IndexOf(']', i + 1);
                    if (close < 0)
                    {
                        throw new BuildException($"the pattern '{pattern}' has a '[' without its ']'", "close the character class, or escape the '[' with a backslash");
                    }
                    string inside = pattern[(i + 1)..close];
                    text.Append('[').Append(inside.StartsWith('^') || inside.StartsWith('!') ? "^" + Regex.Escape(inside[1..]).Replace("\\-", "-") : Regex.Escape(inside).Replace("\\-", "-")).Append(']');
                    i = close;
                    break;
                case '\\' when i + 1 < pattern.Length:
                    text.Append(Regex.Escape(pattern[++i].ToString()));
                    break;
                default:
                    text.Append(Regex.Escape(c.ToString()));
                    break;
            }
        }
        return new Regex(text.Append('$').ToString(), RegexOptions.CultureInvariant);
    }
}
