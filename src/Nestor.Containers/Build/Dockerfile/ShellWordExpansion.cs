using System.Text;

namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>Docker's shell-word lexer: variable substitution (<c>$VAR</c>, <c>${VAR}</c>, <c>${VAR:-word}</c>,
/// <c>${VAR:+word}</c>, <c>${VAR-word}</c>, <c>${VAR+word}</c>, <c>${VAR:?message}</c>, <c>${VAR?message}</c>, and
/// BuildKit's pattern removal <c>${VAR#pattern}</c>, <c>${VAR##pattern}</c>, <c>${VAR%pattern}</c>,
/// <c>${VAR%%pattern}</c> as POSIX's "Parameter Expansion" (XCU 2.6.2) defines them),
/// single quotes (literal), double quotes (variables expand; the escape character escapes <c>"</c>, <c>$</c> and
/// itself) and the escape character outside quotes (the next character is literal), applied to the arguments of
/// the instructions that expand. An unset variable expands to nothing. Malformed substitutions throw
/// <see cref="FormatException"/> (<see cref="Instruction.Expand"/> reports them with the instruction's line).</summary>
/// <param name="lookup">The value of a variable, or null when it is not set.</param>
/// <param name="escapeCharacter">The file's escape character.</param>
public sealed class ShellWordExpansion(Func<string, string?> lookup, char escapeCharacter = '\\')
{
    /// <summary>An expansion in which no variable is set: it only removes quotes and escapes.</summary>
    public static ShellWordExpansion Empty(char escapeCharacter = '\\') => new(_ => null, escapeCharacter);

    /// <summary>Expands one word and removes its quotes (ENV values, paths, a FROM reference); white space stays.</summary>
    public string ProcessWord(string word) => new Lexer(this, word, heredoc: false).Process(-1, null);

    /// <summary>Splits <paramref name="text"/> into words at unquoted white space, including white space a variable's
    /// value brings (<c>EXPOSE $PORTS</c>), expanding each (EXPOSE, VOLUME).</summary>
    public IReadOnlyList<string> ProcessWords(string text)
    {
        var words = new WordList();
        new Lexer(this, text, heredoc: false).Process(-1, words);
        return words.Finish();
    }

    /// <summary>Expands variables in a heredoc body whose delimiter was not quoted: quotes are kept as text, and
    /// the escape character only escapes <c>$</c> and itself (as a POSIX shell's here-document).</summary>
    public string ProcessHeredoc(string content) => new Lexer(this, content, heredoc: true).Process(-1, null);

    /// <summary>Collects words for <see cref="ProcessWords"/>: literal and expanded white space separates them,
    /// quoted or escaped white space does not, and <c>""</c> is an empty word.</summary>
    private sealed class WordList
    {
        private readonly List<string> words = [];
        private readonly StringBuilder current = new();
        private bool present;

        public void AddSplitting(string text)
        {
            foreach (char c in text)
            {
                AddSplitting(c);
            }
        }

        public void AddSplitting(char c)
        {
            if (char.IsWhiteSpace(c))
            {
                Flush();
                return;
            }
            current.Append(c);
            present = true;
        }

        public void AddLiteral(string text)
        {
            current.Append(text);
            present = true;
        }

        public void AddLiteral(char c)
        {
            current.Append(c);
            present = true;
        }

        private void Flush()
        {
            if (present)
            {
                words.Add(current.ToString());
            }
            current.Clear();
            present = false;
        }

        public List<string> Finish()
        {
            Flush();
            return words;
        }
    }

    private sealed class Lexer(ShellWordExpansion expansion, string text, bool heredoc)
    {
        private int position;
        private bool rawEscapes;
        private char Escape => expansion.EscapeCharacter;

        /// <summary>Processes up to <paramref name="stop"/> (consumed; -1 for the end of the text).</summary>
        public string Process(int stop, WordList? words)
        {
            var result = new StringBuilder();
            while (position < text.Length)
            {
                char c = text[position];
                if (stop >= 0 && c == stop)
                {
                    position++;
                    return result.ToString();
                }
                if (heredoc)
                {
                    position++;
                    if (c == '$')
                    {
                        position--;
                        result.Append(Dollar());
                    }
                    else if (c == Escape && position < text.Length && (text[position] == '$' || text[position] == Escape))
                    {
                        result.Append(text[position++]);
                    }
                    else
                    {
                        result.Append(c);
                    }
                    continue;
                }
                switch (c)
                {
                    case '\'':
                        {
                            string quoted = SingleQuoted();
                            result.Append(quoted);
                            words?.AddLiteral(quoted);
                            break;
                        }
                    case '"':
                        {
                            string quoted = DoubleQuoted();
                            result.Append(quoted);
                            words?.AddLiteral(quoted);
                            break;
                        }
                    case '$':
                        {
                            string value = Dollar();
                            result.Append(value);
                            words?.AddSplitting(value);
                            break;
                        }
                    default:
                        position++;
                        if (c == Escape)
                        {
                            if (position == text.Length)
                            {
                                break; // an escape at the end of the word is dropped
                            }
                            c = text[position++];
                            if (rawEscapes)
                            {
                                result.Append('\\'); // kept for the pattern matcher: the next character is literal
                            }
                            result.Append(c);
                            words?.AddLiteral(c);
                        }
                        else
                        {
                            result.Append(c);
                            words?.AddSplitting(c);
                        }
                        break;
                }
            }
            if (stop >= 0)
            {
                throw new FormatException($"missing '{(char)stop}' in '{text}'");
            }
            return result.ToString();
        }

        private string SingleQuoted()
        {
            int start = ++position;
            int end = text.IndexOf('\'', start);
            if (end < 0)
            {
                throw new FormatException($"no closing single quote in '{text}'");
            }
            position = end + 1;
            return text[start..end];
        }

        private string DoubleQuoted()
        {
            position++;
            var result = new StringBuilder();
            while (position < text.Length)
            {
                char c = text[position];
                if (c == '"')
                {
                    position++;
                    return result.ToString();
                }
                if (c == '$')
                {
                    result.Append(Dollar());
                    continue;
                }
                position++;
                if (c == Escape && position < text.Length && (text[position] is '"' or '$' || text[position] == Escape))
                {
                    c = text[position++];
                }
                else if (c == Escape && position == text.Length)
                {
                    continue;
                }
                result.Append(c);
            }
            throw new FormatException($"no closing double quote in '{text}'");
        }

        private static bool IsNameStart(char c) => char.IsAsciiLetter(c) || c == '_';

        private static bool IsNameChar(char c) => char.IsAsciiLetterOrDigit(c) || c == '_';

        /// <summary>Expands the <c>$</c> at the position; a <c>$</c> not followed by a name or <c>{</c> is itself.</summary>
        private string Dollar()
        {
            position++;
            if (position == text.Length)
            {
                return "$";
            }
            char c = text[position];
            if (c != '{')
            {
                if (char.IsAsciiDigit(c))
                {
                    position++;
                    return expansion.Lookup(c.ToString()) ?? "";
                }
                if (!IsNameStart(c))
                {
                    return "$";
                }
                int start = position;
                while (position < text.Length && IsNameChar(text[position]))
                {
                    position++;
                }
                return expansion.Lookup(text[start..position]) ?? "";
            }
            position++;
            int nameStart = position;
            while (position < text.Length && IsNameChar(text[position]))
            {
                position++;
            }
            string name = text[nameStart..position];
            if (name.Length == 0 || position == text.Length)
            {
                throw new FormatException($"bad substitution in '{text}'");
            }
            c = text[position++];
            string? value = expansion.Lookup(name);
            if (c == '}')
            {
                return value ?? "";
            }
            if (c is '#' or '%')
            {
                bool longest = position < text.Length && text[position] == c;
                if (longest)
                {
                    position++;
                }
                // BuildKit's lexer keeps the pattern's escapes (rawEscapes) so that \* stays a literal star.
                bool wasRaw = rawEscapes;
                rawEscapes = true;
                string pattern;
                try
                {
                    pattern = Process('}', null);
                }
                finally
                {
                    rawEscapes = wasRaw;
                }
                return c == '#' ? RemovePrefix(value ?? "", pattern, longest) : RemoveSuffix(value ?? "", pattern, longest);
            }
            if (c == '/')
            {
                // ${VAR/pattern/replacement} and ${VAR//pattern/replacement}: the Dockerfile reference's
                // "Environment replacement", stable since dockerfile 1.7.0 (BuildKit #4287, #4427). The first
                // (or every) leftmost-longest match of the shell pattern is replaced, as bash's
                // "Pattern substitution" does it; the pattern keeps its escapes so that \* is a literal star.
                bool all = position < text.Length && text[position] == '/';
                if (all)
                {
                    position++;
                }
                bool wasRaw = rawEscapes;
                rawEscapes = true;
                string pattern;
                try
                {
                    pattern = Process('/', null);
                }
                catch (FormatException)
                {
                    throw new FormatException($"bad substitution in '{text}': write ${{{name}/pattern/replacement}} (the second '/' is required)");
                }
                finally
                {
                    rawEscapes = wasRaw;
                }
                string replacement = Process('}', null);
                return Replace(value ?? "", pattern, replacement, all);
            }
            bool colon = c == ':';
            if (colon)
            {
                if (position == text.Length)
                {
                    throw new FormatException($"bad substitution in '{text}'");
                }
                c = text[position++];
            }
            if (c is not ('-' or '+' or '?'))
            {
                // ${VAR:offset:length} is bash's, not the Dockerfile reference's (BuildKit refuses it too).
                throw new FormatException(
                    $"unsupported modifier '{(colon ? ":" : "")}{c}' in '${{{name}...}}' (use :- :+ :? - + ? # ## % %% / //; substrings ${{{name}:offset:length}} are not in the Dockerfile reference)");
            }
            // The word is expanded only when it is used, as a shell does; expanding it unused has no effect here
            // (no assignments), so it is processed either way to find the closing brace.
            string word = Process('}', null);
            bool set = colon ? !string.IsNullOrEmpty(value) : value is not null;
            return c switch
            {
                '-' => set ? value! : word,
                '+' => set ? word : "",
                _ => set ? value! : throw new FormatException(
                    $"{name}: {(word.Length > 0 ? word : colon ? "is not set or empty" : "is not set")}"),
            };
        }
    }

    /// <summary><c>${VAR/pattern/replacement}</c> (<paramref name="all"/> false: the first match) and
    /// <c>${VAR//pattern/replacement}</c> (every match): each match is the longest one starting at the leftmost
    /// position where the pattern matches a non-empty string; an empty pattern leaves the value unchanged.</summary>
    public static string Replace(string value, string pattern, string replacement, bool all)
    {
        if (pattern.Length == 0)
        {
            return value;
        }
        var result = new StringBuilder();
        int start = 0;
        for (int i = 0; i < value.Length; i++)
        {
            int length = LongestMatchAt(value, i, pattern);
            if (length == 0)
            {
                continue;
            }
            result.Append(value, start, i - start).Append(replacement);
            start = i + length;
            i = start - 1;
            if (!all)
            {
                break;
            }
        }
        return result.Append(value, start, value.Length - start).ToString();
    }

    /// <summary>The length of the longest non-empty string at <paramref name="index"/> the pattern matches, or 0.</summary>
    private static int LongestMatchAt(string value, int index, string pattern)
    {
        for (int length = value.Length - index; length > 0; length--)
        {
            if (PatternMatches(pattern, value.AsSpan(index, length)))
            {
                return length;
            }
        }
        return 0;
    }

    /// <summary><c>${VAR#pattern}</c> (shortest) and <c>${VAR##pattern}</c> (longest): the value without the
    /// prefix the pattern matches, or unchanged when no prefix matches (XCU 2.6.2).</summary>
    public static string RemovePrefix(string value, string pattern, bool longest)
    {
        for (int i = 0; i <= value.Length; i++)
        {
            int length = longest ? value.Length - i : i;
            if (PatternMatches(pattern, value.AsSpan(0, length)))
            {
                return value[length..];
            }
        }
        return value;
    }

    /// <summary><c>${VAR%pattern}</c> (shortest) and <c>${VAR%%pattern}</c> (longest): the value without the
    /// suffix the pattern matches, or unchanged.</summary>
    public static string RemoveSuffix(string value, string pattern, bool longest)
    {
        for (int i = 0; i <= value.Length; i++)
        {
            int start = longest ? i : value.Length - i;
            if (PatternMatches(pattern, value.AsSpan(start)))
            {
                return value[..start];
            }
        }
        return value;
    }

    /// <summary>Whether the whole of <paramref name="text"/> matches a shell pattern (XCU 2.13): <c>*</c> any string
    /// (<c>/</c> included, unlike a path pattern), <c>?</c> one character, <c>[…]</c> a class (<c>!</c> or
    /// <c>^</c> negating, ranges), a backslash quoting the next character; a <c>[</c> without its <c>]</c> is
    /// itself. Backtracks only to the last <c>*</c>, so it is linear in practice.</summary>
    public static bool PatternMatches(string pattern, ReadOnlySpan<char> text)
    {
        int p = 0, t = 0, starP = -1, starT = 0;
        while (t < text.Length)
        {
            if (p < pattern.Length && pattern[p] == '*')
            {
                starP = ++p;
                starT = t;
                continue;
            }
            if (p < pattern.Length && MatchOne(pattern, ref p, text[t]))
            {
                t++;
                continue;
            }
            if (starP < 0)
            {
                return false;
            }
            p = starP;
            t = ++starT;
        }
        while (p < pattern.Length && pattern[p] == '*')
        {
            p++;
        }
        return p == pattern.Length;
    }

    /// <summary>Matches the pattern element at <paramref name="p"/> against <paramref name="c"/>, advancing
    /// <paramref name="p"/> past it when it matches.</summary>
    private static bool MatchOne(string pattern, ref int p, char c)
    {
        char element = pattern[p];
        if (element == '?')
        {
            p++;
            return true;
        }
        if (element == '\\' && p + 1 < pattern.Length)
        {
            if (pattern[p + 1] != c)
            {
                return false;
            }
            p += 2;
            return true;
        }
        if (element == '[' && ClassEnd(pattern, p) is int end and > 0)
        {
            int i = p + 1;
            bool negate = pattern[i] is '!' or '^';
            if (negate)
            {
                i++;
            }
            bool found = false;
            while (i < end)
            {
                char low = pattern[i] == '\\' && i + 1 < end ? pattern[++i] : pattern[i];
                i++;
                char high = low;
                if (i + 1 < end && pattern[i] == '-')
                {
                    high = pattern[i + 1] == '\\' && i + 2 < end ? pattern[i + 2] : pattern[i + 1];
                    i += pattern[i + 1] == '\\' && i + 2 < end ? 3 : 2;
                }
                found |= c >= low && c <= high;
            }
            if (found == negate)
            {
                return false;
            }
            p = end + 1;
            return true;
        }
        if (element != c)
        {
            return false;
        }
        p++;
        return true;
    }

    /// <summary>The index of the <c>]</c> closing the class at <paramref name="open"/>, or -1 (a <c>]</c> right after
    /// the <c>[</c> or its negation is a member, as XCU 9.3.5 says).</summary>
    private static int ClassEnd(string pattern, int open)
    {
        int i = open + 1;
        if (i < pattern.Length && pattern[i] is '!' or '^')
        {
            i++;
        }
        if (i < pattern.Length && pattern[i] == ']')
        {
            i++;
        }
        for (; i < pattern.Length; i++)
        {
            if (pattern[i] == '\\')
            {
                i++;
            }
            else if (pattern[i] == ']')
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>The escape character this expansion honours.</summary>
    public char EscapeCharacter { get; } = escapeCharacter;

    private string? Lookup(string name) => lookup(name);
}
