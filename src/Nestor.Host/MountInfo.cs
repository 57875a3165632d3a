namespace Nestor.Host;

/// <summary>Reading /proc/PID/mountinfo (proc(5), "/proc/pid/mountinfo").</summary>
public static class MountInfo
{
    /// <summary>Undoes the kernel's escapes in a mountinfo field: space, tab, newline and backslash are written as
    /// <c>\ooo</c> octal (<c>\040</c> for a space), so that fields stay space-separated.</summary>
    public static string Unescape(string field)
    {
        if (!field.Contains('\\', StringComparison.Ordinal))
        {
            return field;
        }
        var text = new System.Text.StringBuilder(field.Length);
        for (int i = 0; i < field.Length; i++)
        {
            if (field[i] == '\\' && i + 3 < field.Length)
            {
                text.Append((char)Convert.ToInt32(field.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
            {
                text.Append(field[i]);
            }
        }
        return text.ToString();
    }
}
