using System.CommandLine;
using System.Globalization;
using Nestor.Cli.Output;
using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Inspection;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Machine.Paging;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor walk ADDRESS</c>: run NestorOS on the software machine until it ends (or a breakpoint), then
/// explain the page walk of one guest-virtual address reference by reference — the 2-D walk under nested paging.</summary>
internal static class WalkCommand
{
    public static Command Create()
    {
        var address = new Argument<string>("address") { Description = "Guest-virtual address, e.g. 0x8000001000" };
        var pid = TypedOptions.Integer("--pid", "Walk in this NestorOS process's address space (default: the one running when the VM stopped)",
            0, int.MaxValue, "a NestorOS process number", "2");
        var commandLine = new Option<string>("--cmdline") { Description = "NestorOS command line", DefaultValueFactory = _ => "memtouch 4 rand" };
        var breakAt = TypedOptions.Long("--break-at", "Stop after this many instructions instead of at the end of the run",
            1, long.MaxValue, "a positive number of instructions", "5000000");
        var mmu = new Option<string>("--mmu") { Description = "nested (2-D walk, the default), shadow, or native (no VMM)", DefaultValueFactory = _ => "nested" };
        var nestedPages = new Option<string?>("--nested-pages") { Description = "4k (the default) or 2m nested pages, with --mmu nested" };
        var memory = new Option<string>("--memory", "-m") { Description = "Guest RAM", DefaultValueFactory = _ => "64M" };
        var user = new Option<bool>("--supervisor") { Description = "Walk as a supervisor access (default: a user access)" };
        var command = new Command("walk", "Run NestorOS, stop, and explain the page walk of a guest-virtual address step by step (the 2-D walk under nested paging)")
        {
            address, pid, commandLine, breakAt, mmu, nestedPages, memory, user,
        };
        var mmuOptions = new MmuOptions();
        foreach (var option in mmuOptions.All)
        {
            command.Options.Add(option);
        }
        command.SetAction(parse =>
        {
            try
            {
                return Execute(parse.GetValue(address)!, parse.GetValue(pid), parse.GetValue(commandLine)!, parse.GetValue(breakAt),
                    parse.GetValue(mmu)!, parse.GetValue(nestedPages), parse.GetValue(memory)!, !parse.GetValue(user), mmuOptions.Parse(parse));
            }
            catch (NestorException e)
            {
                return CommandErrors.Report(e);
            }
        });
        return command;
    }

    private static int Execute(string addressText, int? pid, string commandLine, long? breakAt, string mmuText, string? nestedPagesText,
        string memoryText, bool user, MmuConfiguration caches)
    {
        ulong linear = ParseAddress(addressText);
        RefuseNonCanonical(linear, addressText);
        var options = mmuText.ToLowerInvariant() switch
        {
            "nested" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested },
            "shadow" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow },
            "native" => new SimOptions(),
            _ => throw new BadInputException($"there is no --mmu '{mmuText}' for a walk", "Use --mmu nested, shadow or native"),
        };
        if (nestedPagesText is not null && TechniqueRules.Check(options.Choice with { NestedPageSizeChosen = true }) is { } violation)
        {
            throw new BadInputException(violation.Message, "Drop --nested-pages, or walk with --mmu nested");
        }
        options = options with
        {
            Mmu = caches,
            LargeNestedPages = (nestedPagesText ?? "4k").ToLowerInvariant() switch
            {
                "4k" => false,
                "2m" => true,
                _ => throw new BadInputException($"--nested-pages {nestedPagesText} is not a page size the nested table has", "Use 4k or 2m"),
            },
            StopAtInstruction = breakAt is { } b && b <= 0
                ? throw new BadInputException($"--break-at {b} is not a positive instruction count", "Give e.g. --break-at 5000000")
                : breakAt,
        };
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = new KernelImageSource("built-in NestorOS", BuiltInGuests.NestorOS(), KernelFormat.Elf),
            MemoryBytes = Size.Parse(memoryText, "--memory"),
            CommandLine = commandLine,
            SerialOutput = Stream.Null,
        });
        using var engine = new SimEngine(options);
        var run = vm.Run(engine);
        var outcome = run.Outcome;
        var cpu = run.Machine!.Cpu;
        string mode = options.EffectiveMemory switch { null => "native", MemoryVirtualization.Nested => "nested", _ => "shadow" };
        Console.WriteLine($"NestorOS '{commandLine}' on the software machine ({(mode == "native" ? "no VMM" : $"hw+{mode}")}): {outcome.Message}.");
        var processes = NestorOSProcesses.Read(vm) ?? [];
        ulong? root = null;
        string space = $"the address space the CPU was in (CR3 = 0x{cpu.Cr3:x})";
        if (pid is { } wanted)
        {
            var process = processes.FirstOrDefault(p => p.Pid == wanted) ?? throw new BadInputException(
                $"there is no process {wanted} when the VM stopped; live: " +
                (processes.Count == 0 ? "none" : string.Join(", ", processes.Select(p => $"{p.Pid} ({p.Name})"))),
                "Pick one of those, or stop earlier with --break-at");
            space = $"process {process.Pid} ({process.Name}), CR3 = 0x{process.PageTableRoot:x}";
            if ((process.PageTableRoot & PageWalker.AddressMask) != (cpu.Cr3 & PageWalker.AddressMask))
            {
                root = mode switch
                {
                    "nested" => process.PageTableRoot,
                    "shadow" => run.Machine.Monitor!.Shadow!.RootFor(process.PageTableRoot) ?? throw new BadInputException(
                        $"process {wanted} has no shadow page table yet", "Walk it under --mmu nested, or stop later"),
                    _ => process.PageTableRoot,
                };
            }
        }
        Console.WriteLine($"Live processes: {(processes.Count == 0 ? "none" : string.Join(", ", processes.Select(p => $"{p.Pid} {p.Name} (CR3 0x{p.PageTableRoot:x})")))}.");
        var walk = WalkExplanation.Of(cpu.Mmu, linear, root, user, mode);
        Print(walk, space, user);
        return 0;
    }

    private static ulong ParseAddress(string text)
    {
        string t = text.Replace("_", "", StringComparison.Ordinal);
        bool ok = t.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? ulong.TryParse(t[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong v)
            : ulong.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out v);
        return ok ? v : throw new BadInputException($"'{text}' is not an address", "Give e.g. 0x8000001000");
    }

    /// <summary>A linear address the CPU would refuse before any walk: with 4-level paging only 48 bits translate,
    /// and bits 63..47 must all be equal (sign-extended, SDM Vol. 1 §3.3.7.1); any other address raises #GP (#SS
    /// for a stack reference) and no page table is read.</summary>
    private static void RefuseNonCanonical(ulong linear, string text)
    {
        long upper = (long)linear >> 47;
        if (upper is 0 or -1)
        {
            return;
        }
        throw new BadInputException(
            $"{text} (0x{linear:x16}) is not a canonical address: bits 63..47 of an address must all be equal (all 0: " +
            "0x0000000000000000..0x00007fffffffffff, or all 1: 0xffff800000000000..0xffffffffffffffff). A CPU raises #GP " +
            "(#SS for a stack reference) for a non-canonical address and never walks the page tables for it",
            $"Give a canonical address: with the same low 48 bits, that is 0x{(ulong)((long)(linear << 16) >> 16):x} (bits 63..48 copies of bit 47)");
    }

    private static readonly string[] GuestLevels = ["PML4E", "PDPTE", "PDE", "PTE"];
    private static readonly string[] NestedLevels = ["EPT PML4E", "EPT PDPTE", "EPT PDE", "EPT PTE"];

    private static void Print(WalkExplanation w, string space, bool user)
    {
        Console.WriteLine();
        Console.WriteLine($"Walk of guest-virtual 0x{w.Linear:x16} ({(user ? "user" : "supervisor")} read) in {space}:");
        string guestName = w.Mode == "shadow" ? "shadow" : "guest";
        Console.WriteLine($"{"#",3}  {"table",-7} {"entry",-10} {"for address",-20} {"table at",-24} {"entry read at (host-physical)",-30} {"entry value",-20} saved by (caches as they are now)");
        foreach (var s in w.Steps)
        {
            var step = s.Step;
            bool nested = step.Dimension == WalkDimension.Nested;
            string table = nested ? "nested" : guestName;
            string level = nested ? NestedLevels[step.Level] : GuestLevels[step.Level];
            string tableAt = nested || w.Mode != "nested" ? $"0x{step.TableAddress:x}" : $"guest-phys 0x{step.TableAddress:x}";
            Console.WriteLine($"{s.Number,3}  {table,-7} {level,-10} 0x{step.Input,-18:x} {tableAt,-24} 0x{step.EntryAddress,-28:x} 0x{step.Entry,-18:x} {s.SavedBy ?? "–"}");
        }
        Console.WriteLine();
        if (w.Fault is { } fault)
        {
            Console.WriteLine($"The walk ends in a page fault (error code {fault}): the guest's tables do not map this address for this access.");
        }
        else
        {
            string size = w.Result.PageShift switch { 12 => "4 KiB", 21 => "2 MiB", _ => "1 GiB" };
            Console.WriteLine($"Result: host-physical page 0x{w.Result.PhysicalPage:x} ({size} as the TLB would hold it); " +
                $"0x{w.Linear:x} is at host-physical 0x{w.Result.PhysicalPage | (w.Linear & ((1UL << w.Result.PageShift) - 1)):x}.");
        }
        Console.WriteLine($"{w.ColdReferences} memory references with every cache cold" +
            (w.Mode == "nested" ? " (24 for a 4-level guest walk over a 4-level nested table, 4 natively)" : "") +
            (w.CachesApply ? $"; {w.ReferencesWithCaches} with the page-walk caches and nested TLB as they are now" : "; the caches hold another address space's entries, so none apply") +
            (w.TlbHolds ? ", and none at all now: the TLB holds this translation." : "."));
    }
}
