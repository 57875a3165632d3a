using System.Globalization;
using Nestor.Hypervisor.Errors;

namespace Nestor.Cli.Commands;

/// <summary>Checks a NestorOS command line the way NestorOS reads it, before <c>nestor bench</c> runs it a dozen
/// times over. init runs the commands separated by <c>;</c> (guest/user/init.c); each program reads its counts with
/// <c>parse_u64</c> (guest/user/lib.c), which takes decimal digits only, falls back to the program's default for
/// anything else (so <c>forkwait -5</c> and <c>forkwait abc</c> would quietly run <c>forkwait 40000</c>) and wraps
/// past 2^64; no program takes an option, so a word beginning with <c>-</c> is a mistyped option of nestor's. The line
/// may begin with the kernel's options (<c>ata=</c>, <c>virtio=</c>, <c>ndma=</c> poll or irq, <c>virtioseg=BYTES</c>,
/// <c>servicevm=front|back</c>, <c>blkfront=forge</c>, <c>blkback=forge</c>; guest/kernel/block.c, docs/guest.md; <c>swap=DEV</c>,
/// guest/kernel/swap.c), which the kernel takes off
/// before init sees the rest.</summary>
internal static class NestorOSCommandLine
{
    /// <summary>One argument of a program: a count (with the default NestorOS uses without it) or a word from a list.</summary>
    /// <param name="AnyWord">Any word is taken (a block device's name or index: the program itself says when there
    /// is no such device, which only the guest knows).</param>
    /// <param name="Multiple">A count must be a multiple of this (a disk transfer's 512-byte sectors).</param>
    /// <param name="Maximum">The largest count the program takes.</param>
    private sealed record Parameter(string Name, ulong? Default = null, ulong Minimum = 0, string[]? Words = null, bool AnyWord = false,
        ulong Multiple = 1, ulong Maximum = ulong.MaxValue)
    {
        public override string ToString() => $"[{Name}]";
    }

    private sealed record Program(string Name, params Parameter[] Parameters)
    {
        public override string ToString() => Parameters.Length == 0 ? Name : $"{Name} {string.Join(' ', Parameters.Select(p => p.ToString()))}";
    }

    /// <summary>NestorOS's programs and their arguments, as guest/user/programs.c reads them.</summary>
    private static readonly Program[] Programs =
    [
        new("hello"),
        new("forkwait", new Parameter("COUNT", 40000)),
        new("syscall", new Parameter("COUNT", 1000000)),
        new("pagefault", new Parameter("COUNT", 100000)),
        // memtouch 0 touches nothing and fails (it returns 1).
        new("memtouch", new Parameter("SIZE_MB", 16, Minimum: 1), new Parameter("MODE", Words: ["seq", "rand", "stride"])),
        new("ptchurn", new Parameter("COUNT", 10000)),
        new("compute", new Parameter("COUNT", 1000000)),
        new("sensitive"),
        new("fault"),
        new("preempt", new Parameter("COUNT", 20000000)),
        new("mmutest"),
        new("nanobench", new Parameter("OP", Words: ["syscall", "in", "cr8wr", "callret", "pgfault", "divzero", "ptemod"]), new Parameter("COUNT", 10000)),
        // guest/user/disk.c: SIZE is a multiple of 512 up to the block layer's 1 MiB transfer (BLK_MAX_TRANSFER).
        new("disktest", new Parameter("DEV", AnyWord: true), new Parameter("MODE", Words: ["seq", "rand"]),
            new Parameter("SIZE", 4096, Minimum: SectorBytes, Multiple: SectorBytes, Maximum: MaximumTransfer)),
        new("diskbench", new Parameter("DEV", AnyWord: true), new Parameter("OP", Words: ["read", "write"]),
            new Parameter("SIZE", 4096, Minimum: SectorBytes, Multiple: SectorBytes, Maximum: MaximumTransfer), new Parameter("COUNT", 100)),
        new("diskcheck", new Parameter("DEV", AnyWord: true)),
        // guest/user/swaptouch.c: 0 pages is refused by the program.
        new("swaptouch", new Parameter("PAGES", 4096, Minimum: 1), new Parameter("MODE", Words: ["fork"])),
    ];

    /// <summary>Programs that print their usage and fail unless given all their arguments.</summary>
    private static readonly Dictionary<string, int> RequiredArguments = new() { ["disktest"] = 1, ["diskbench"] = 4, ["diskcheck"] = 1 };

    private const ulong SectorBytes = 512, MaximumTransfer = 1 << 20;

    /// <summary>The kernel's options (guest/kernel/block.c): how each disk driver waits, and virtio's segment limit.</summary>
    private static readonly string[] WaitOptions = ["ata", "virtio", "ndma"];

    /// <summary>The kernel keeps 511 bytes of its command line (guest/kernel/main.c) and init splits it into 64 words
    /// at most, with 224 bytes of arguments per program.</summary>
    private const int MaximumLength = 511, MaximumWords = 64, MaximumArgumentBytes = 223;

    /// <summary>The command line <paramref name="tokens"/> make, checked: each word is separated by one space.</summary>
    /// <exception cref="BadInputException">Something NestorOS would misread or refuse.</exception>
    public static string Check(IReadOnlyList<string> tokens)
    {
        var words = tokens.SelectMany(t => t.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).ToList();
        if (words.Count == 0)
        {
            throw new BadInputException("no NestorOS program was given", $"Give one, e.g. nestor bench forkwait 40000; the programs: {Catalogue()}");
        }
        int options = 0;
        while (options < words.Count && IsKernelOption(words[options]))
        {
            options++;
        }
        if (options == words.Count)
        {
            throw new BadInputException("the NestorOS command line has kernel options but no program", $"Give a program after them; the programs: {Catalogue()}");
        }
        var command = new List<string>();
        foreach (var word in words.Skip(options).Append(";"))
        {
            if (word != ";")
            {
                command.Add(word);
                continue;
            }
            if (command.Count > 0)
            {
                CheckCommand(command);
            }
            command.Clear();
        }
        string line = string.Join(' ', words);
        if (line.Length > MaximumLength || words.Count > MaximumWords)
        {
            throw new BadInputException(
                $"the NestorOS command line is {line.Length} bytes in {words.Count} words; NestorOS keeps {MaximumLength} bytes and {MaximumWords} words",
                "Run fewer commands at once");
        }
        return line;
    }

    /// <summary>A line of kernel options only (a service VM's, which runs no programs), checked as the kernel reads them.</summary>
    /// <exception cref="BadInputException">A word that is not a kernel option, or a malformed one.</exception>
    public static string CheckKernelOptions(string line)
    {
        var words = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        foreach (string word in words)
        {
            if (!IsKernelOption(word))
            {
                throw new BadInputException($"'{word}' is not a NestorOS kernel option, and the service VM runs no programs",
                    "Give only kernel options, e.g. --service-cmdline ata=irq");
            }
        }
        return string.Join(' ', words);
    }

    /// <summary>A kernel option the kernel takes off the line's start; a malformed one is an error, since the kernel
    /// would pass it to init as a program name.</summary>
    private static bool IsKernelOption(string word)
    {
        int equals = word.IndexOf('=');
        if (equals <= 0)
        {
            return false;
        }
        string key = word[..equals], value = word[(equals + 1)..];
        if (WaitOptions.Contains(key))
        {
            return value is "poll" or "irq" ? true : throw new BadInputException($"the kernel option {key}= is poll or irq, not '{value}'", $"Give {key}=poll or {key}=irq");
        }
        if (key == "virtioseg")
        {
            return value.Length > 0 && value.All(char.IsAsciiDigit) && ulong.TryParse(value, CultureInfo.InvariantCulture, out ulong bytes) && bytes >= SectorBytes && bytes % SectorBytes == 0
                ? true
                : throw new BadInputException($"the kernel option virtioseg= is a number of bytes, a multiple of 512, not '{value}'", "Give e.g. virtioseg=4096");
        }
        if (key == "servicevm")
        {
            return value is "front" or "back" ? true : throw new BadInputException($"the kernel option servicevm= is front or back, not '{value}'",
                "Give servicevm=front (the user VM of a pair; nestor run --service-vm adds it) or servicevm=back (the service VM)");
        }
        if (key == "swap")
        {
            // guest/kernel/swap.c keeps 7 characters of the device's name, as the block layer does (block.h).
            return value.Length is > 0 and <= 7 && !value.Contains(';') ? true : throw new BadInputException(
                $"the kernel option swap= names a block device (at most 7 characters), not '{value}'",
                "Give e.g. swap=vdb with a second --disk, or swap=ata0 with --disk FILE,if=ata");
        }
        if (key == "blkback")
        {
            return value == "forge" ? true : throw new BadInputException($"the kernel option blkback= is forge, not '{value}'",
                "Give blkback=forge (the back-end answers one request with a forged id) or leave it out");
        }
        if (key == "blkfront")
        {
            return value == "forge" ? true : throw new BadInputException($"the kernel option blkfront= is forge, not '{value}'",
                "Give blkfront=forge (the front-end sends one request with a forged grant reference) or leave it out");
        }
        throw new BadInputException($"there is no NestorOS kernel option '{key}='",
            "The kernel's options, before the program: ata=poll|irq, virtio=poll|irq, ndma=poll|irq, virtioseg=BYTES, servicevm=front|back, blkfront=forge, blkback=forge, swap=DEV");
    }

    private static void CheckCommand(List<string> command)
    {
        string name = command[0];
        if (command.FirstOrDefault(w => LooksLikeOption(w) && !IsSignedNumber(w)) is { } option)
        {
            throw NotAnOption(option);
        }
        var program = Programs.FirstOrDefault(p => p.Name == name) ?? throw new BadInputException(
            $"there is no NestorOS program '{name}'", $"The programs: {Catalogue()}");
        var arguments = command.Skip(1).ToList();
        if (arguments.Count > program.Parameters.Length)
        {
            string extra = string.Join(' ', arguments.Skip(program.Parameters.Length));
            throw new BadInputException(
                program.Parameters.Length == 0
                    ? $"{name} takes no arguments, but was given '{extra}'"
                    : $"{name} takes at most {program.Parameters.Length} argument{(program.Parameters.Length > 1 ? "s" : "")} ({program}), but was also given '{extra}'",
                $"Give {program}");
        }
        if (RequiredArguments.TryGetValue(name, out int required) && arguments.Count < required)
        {
            throw new BadInputException($"{name} needs at least {required} argument{(required > 1 ? "s" : "")} ({program}), but was given {arguments.Count}",
                $"Give {program}, e.g. {name} vda{(required > 1 ? " read 4096 100" : "")}");
        }
        if (arguments.Sum(a => a.Length + 1) > MaximumArgumentBytes)
        {
            throw new BadInputException($"the arguments of {name} are longer than the {MaximumArgumentBytes} bytes init passes on", "Shorten them");
        }
        for (int i = 0; i < arguments.Count; i++)
        {
            CheckArgument(program, program.Parameters[i], arguments[i]);
        }
    }

    private static void CheckArgument(Program program, Parameter parameter, string text)
    {
        if (parameter.AnyWord)
        {
            return;
        }
        if (parameter.Words is { } words)
        {
            if (!words.Contains(text))
            {
                throw new BadInputException($"{program.Name}'s {parameter.Name} is one of {string.Join(", ", words)}, not '{text}'", $"Give {program}");
            }
            return;
        }
        if (text.All(char.IsAsciiDigit))
        {
            if (!ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out ulong value))
            {
                throw new BadInputException($"{program.Name}'s {parameter.Name} {text} is larger than NestorOS counts (2^64 - 1); it would wrap around",
                    $"Give a smaller {parameter.Name}");
            }
            if (value < parameter.Minimum)
            {
                throw new BadInputException($"{program.Name}'s {parameter.Name} must be at least {parameter.Minimum}, not {text}", $"Give e.g. {program.Name} {parameter.Default}");
            }
            if (value % parameter.Multiple != 0 || value > parameter.Maximum)
            {
                throw new BadInputException($"{program.Name}'s {parameter.Name} must be a multiple of {parameter.Multiple} up to {parameter.Maximum}, not {text}",
                    $"Give e.g. {parameter.Default}");
            }
            return;
        }
        throw new BadInputException(
            $"{program.Name}'s {parameter.Name} must be a whole number{(parameter.Minimum > 0 ? $" of at least {parameter.Minimum}" : " of 0 or more")}, not '{text}' " +
            $"(NestorOS would read it as its default, {parameter.Default}, and say nothing)",
            $"Give e.g. {program.Name} {parameter.Default}");
    }

    private static bool LooksLikeOption(string word) => word.StartsWith('-');

    private static bool IsSignedNumber(string word) =>
        word.Length > 1 && word[0] is '-' or '+' && word[1..].All(c => char.IsAsciiDigit(c) || c == '.');

    private static BadInputException NotAnOption(string word) => new(
        $"'{word}' is not an option of 'nestor bench', and NestorOS programs take no options",
        "Run 'nestor bench --help' for its options");

    private static string Catalogue() => string.Join(", ", Programs.Select(p => p.ToString()));
}
