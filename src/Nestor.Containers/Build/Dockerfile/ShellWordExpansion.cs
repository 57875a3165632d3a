namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>Docker's shell-word lexer: variable substitution (<c>$VAR</c>, <c>${VAR}</c>, <c>${VAR:-word}</c>,
/// <c>${VAR:+word}</c>, <c>${VAR-word}</c>, <c>${VAR+word}</c>), single and double quotes and the escape
/// character, applied to the arguments of the instructions that expand.</summary>
/// <param name="lookup">The value of a variable, or null when it is not set.</param>
/// <param name="escapeCharacter">The file's escape character.</param>
public sealed class ShellWordExpansion(Func<string, string?> lookup, char escapeCharacter = '\\')
{
    /// <summary>Expands one word and removes its quotes (ENV values, paths, a FROM reference).</summary>
    public string ProcessWord(string word) => throw new NotImplementedException(word + lookup + escapeCharacter);

    /// <summary>Splits <paramref name="text"/> into words at unquoted white space, expanding each (EXPOSE, VOLUME).</summary>
    public IReadOnlyList<string> ProcessWords(string text) => throw new NotImplementedException(text);

    /// <summary>Expands variables in a heredoc body whose delimiter was not quoted (quotes are kept as text).</summary>
    public string ProcessHeredoc(string content) => throw new NotImplementedException(content);
}
