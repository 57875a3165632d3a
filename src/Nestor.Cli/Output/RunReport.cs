using System.Globalization;
using System.Text;
using System.Text.Json;
using Nestor.Hypervisor;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.State;

namespace Nestor.Cli.Output;

/// <summary>What <c>nestor run</c> reports after a run, as text for people or one JSON document for tools.</summary>
internal sealed class RunReport(Vm vm, IEngine engine, RunResult run, TimeSpan wall, int exitStatus, MemoryStream serial)
{
    private readonly VmOutcome outcome = run.Outcome;

    /// <summary>Rows a per-port or per-address table shows before summing up the rest.</summary>
    private const int TableRows = 32;

    /// <summary>Explains on <paramref name="o"/> how the run ended, unless the guest simply exited.</summary>
    public void WriteOutcome(TextWriter o)
    {
        if (outcome.Kind == VmOutcomeKind.DebugExit)
        {
            if (outcome.GuestStatus > ExitStatus.GuestStatusCeiling)
            {
                o.WriteLine($"nestor: the guest exited with status {outcome.GuestStatus} (0x{outcome.GuestStatus:x}); " +
                            $"statuses above {ExitStatus.GuestStatusCeiling} are reported as exit status {ExitStatus.GuestStatusCeiling}");
            }
            return;
        }
        o.WriteLine($"nestor: {outcome.Message}");
        if (outcome.Kind == VmOutcomeKind.Timeout && engine is SimEngine && vm.Config.Clock != Nestor.Hypervisor.Configuration.GuestClock.Host)
        {
            // The likeliest reason a guest that runs on QEMU times out here: it waits for its clock, which counts
            // retired instructions, so a second of its time takes as many seconds as the interpreter needs for 10^9.
            var bsp = vm.Vcpus[0].State;
            double guestSeconds = (bsp.InstructionsRetired + bsp.IdleCycles) / (double)Nestor.Hypervisor.Devices.Platform.PlatformClock.SimCyclesPerSecond;
            string counted = guestSeconds.ToString("0.###", CultureInfo.InvariantCulture);
            string passed = wall.TotalSeconds.ToString("0.#", CultureInfo.InvariantCulture);
            o.WriteLine($"nestor: the guest's clock counted {counted} s in {passed} s of wall time (the virtual clock: one cycle per retired instruction, at a nominal 1 GHz); " +
                "if the guest waits for its clock (a TSC loop, a timer), --clock host lets its time follow the host's, as QEMU's TCG does (docs/cpu-model.md, \"Guest time\")");
        }
        if (outcome.Kind is VmOutcomeKind.TripleFault or VmOutcomeKind.EmulationFailure or VmOutcomeKind.EntryFailure
            or VmOutcomeKind.UnexpectedExit && outcome.FinalState is { } state)
        {
            o.WriteLine("final vCPU state:");
            o.WriteLine(VcpuStateWriter.ToText(outcome.FinalState!));
        }
    }

    /// <summary>Exit tables and engine counters; <paramref name="withRunLine"/> false leaves out the line that says
    /// how the run ended (a service VM's report, whose run is the user VM's).</summary>
    public void WriteStatistics(TextWriter o, bool withRunLine = true)
    {
        var exits = vm.Exits;
        if (withRunLine)
        {
            o.WriteLine();
            o.WriteLine($"Run: {Describe()} after {Milliseconds(wall)} ms wall time (exit status {exitStatus})");
        }
        o.WriteLine();
        o.WriteLine($"VM exits handled by Nestor ({engine.Name} engine):");
        o.WriteLine($"  {"reason",-16} {"count",10} {"handling time",15} {"per exit",12}");
        foreach (var r in exits.ByReason)
        {
            o.WriteLine($"  {Name(r.Reason),-16} {r.Count,10} {Milliseconds(r.HandlingTime) + " ms",15} {Microseconds(r.HandlingTime / r.Count) + " us",12}");
        }
        o.WriteLine($"  {"total",-16} {exits.TotalExits,10} {Milliseconds(exits.HandlingTime) + " ms",15}");
        o.WriteLine($"  time running the guest ({engine.Description.GuestTime}): {Milliseconds(exits.GuestTime)} ms");
        if (exits.ByPort.Count > 0)
        {
            o.WriteLine();
            o.WriteLine("Port I/O by port:");
            o.WriteLine($"  {"port",-8} {"device",-12} {"reads",10} {"writes",10}");
            // The busiest ports, in port order; a guest sweeping all 65,536 ports gets one line for the rest.
            var shown = exits.ByPort.OrderByDescending(p => p.Reads + p.Writes).Take(TableRows).OrderBy(p => p.Port).ToList();
            foreach (var p in shown)
            {
                o.WriteLine($"  {"0x" + p.Port.ToString("x", CultureInfo.InvariantCulture),-8} {p.Device,-12} {p.Reads,10} {p.Writes,10}");
            }
            if (exits.ByPort.Count > shown.Count)
            {
                var rest = exits.ByPort.Except(shown).ToList();
                o.WriteLine($"  {rest.Count + " other ports",-21} {rest.Sum(p => p.Reads),10} {rest.Sum(p => p.Writes),10}  (--json lists them all)");
            }
        }
        if (exits.ByDeviceMemory.Count > 0)
        {
            // An assigned device's registers are mapped into the guest: its accesses are direct, not exits.
            o.WriteLine();
            o.WriteLine("Device memory (MMIO) by device: trapped accesses are exits, direct ones reach an assigned device without one:");
            o.WriteLine($"  {"device",-14} {"exit reads",11} {"exit writes",12} {"direct reads",13} {"direct writes",14}");
            foreach (var d in exits.ByDeviceMemory)
            {
                o.WriteLine($"  {d.Device,-14} {d.TrappedReads,11} {d.TrappedWrites,12} {d.DirectReads,13} {d.DirectWrites,14}");
            }
        }
        if (vm.Disks.Count > 0)
        {
            // Requests as the guest's driver made them, whatever the interface (an ATA command, a virtio-blk request).
            o.WriteLine();
            o.WriteLine("Disks:");
            o.WriteLine($"  {"disk",-20} {"where",-16} {"reads",8} {"writes",8} {"flushes",8} {"errors",7} {"bytes read",12} {"bytes written",14} {"interrupts",10}");
            foreach (var d in vm.Disks)
            {
                var s = d.Statistics;
                o.WriteLine($"  {d.Backend.Name + (d.Backend.ReadOnly ? " (ro)" : ""),-20} {d.Place,-16} {s.Reads,8} {s.Writes,8} {s.Flushes,8} {s.Errors,7} {s.BytesRead,12} {s.BytesWritten,14} {s.Interrupts,10}");
            }
        }
        var unclaimed = vm.Bus.UnclaimedAccesses.Accesses;
        if (unclaimed.Count > 0)
        {
            o.WriteLine();
            o.WriteLine("Accesses to addresses no device claims:");
            // The busiest addresses and the overflow counts; one line for the rest (--json lists them all).
            var listed = unclaimed.Where(u => u.Length == 0)
                .Concat(unclaimed.Where(u => u.Length != 0).OrderByDescending(u => u.Reads + u.Writes).Take(TableRows)).ToHashSet();
            foreach (var u in unclaimed.Where(listed.Contains))
            {
                o.WriteLine($"  {(u.Space == Hypervisor.Devices.AccessSpace.Port ? "port" : "mmio"),-5} {u.Where,-24} reads {u.Reads,8}  writes {u.Writes,8}");
            }
            if (unclaimed.Count > listed.Count)
            {
                var rest = unclaimed.Where(u => !listed.Contains(u)).ToList();
                o.WriteLine($"  {rest.Count + " more",-30} reads {rest.Sum(u => u.Reads),8}  writes {rest.Sum(u => u.Writes),8}  (--json lists them all)");
            }
        }
        var counters = run.Counters.Where(c => c.Value != 0).OrderBy(c => c.Name, StringComparer.Ordinal).ToList();
        if (run.Counters.Count > 0)
        {
            o.WriteLine();
            o.WriteLine(engine.Description.CountersHeading);
            foreach (var c in counters)
            {
                o.WriteLine($"  {c.Name,-36} {c.Value,14}{(c.Unit.Length > 0 ? " " + c.Unit : "")}");
            }
        }
    }

    /// <summary>The whole report as one JSON document.</summary>
    public void WriteJson(TextWriter o, bool includeState)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("kernel", vm.Config.Kernel.Name);
            json.WriteString("engine", engine.Name);
            json.WriteNumber("memory_bytes", vm.Config.MemoryBytes);
            json.WriteStartObject("outcome");
            json.WriteString("kind", Kebab(outcome.Kind.ToString()));
            json.WriteString("message", outcome.Message);
            if (outcome.GuestStatus is { } g)
            {
                json.WriteNumber("guest_status", g);
            }
            if (outcome.InstructionBytes is { Length: > 0 } bytes)
            {
                json.WriteString("instruction_bytes", Convert.ToHexString(bytes).ToLowerInvariant());
            }
            if (outcome.Instruction is { } text)
            {
                json.WriteString("instruction", text);
            }
            json.WriteEndObject();
            json.WriteNumber("exit_status", exitStatus);
            json.WriteNumber("wall_ns", (long)(wall.Ticks * 100));
            json.WriteString("serial", Encoding.UTF8.GetString(serial.ToArray()));
            var exits = vm.Exits;
            json.WriteStartObject("exits");
            json.WriteNumber("total", exits.TotalExits);
            json.WriteNumber("guest_ns", (long)(exits.GuestTime.Ticks * 100));
            json.WriteNumber("handling_ns", (long)(exits.HandlingTime.Ticks * 100));
            json.WriteStartObject("by_reason");
            foreach (var r in exits.ByReason)
            {
                json.WriteStartObject(Name(r.Reason));
                json.WriteNumber("count", r.Count);
                json.WriteNumber("handling_ns", (long)(r.HandlingTime.Ticks * 100));
                json.WriteEndObject();
            }
            json.WriteEndObject();
            json.WriteStartArray("by_port");
            foreach (var p in exits.ByPort)
            {
                json.WriteStartObject();
                json.WriteString("port", "0x" + p.Port.ToString("x", CultureInfo.InvariantCulture));
                json.WriteString("device", p.Device);
                json.WriteNumber("reads", p.Reads);
                json.WriteNumber("writes", p.Writes);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartArray("by_device_memory");
            foreach (var d in exits.ByDeviceMemory)
            {
                json.WriteStartObject();
                json.WriteString("device", d.Device);
                json.WriteNumber("exit_reads", d.TrappedReads);
                json.WriteNumber("exit_writes", d.TrappedWrites);
                json.WriteNumber("direct_reads", d.DirectReads);
                json.WriteNumber("direct_writes", d.DirectWrites);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteEndObject();
            json.WriteStartArray("unclaimed");
            foreach (var u in vm.Bus.UnclaimedAccesses.Accesses)
            {
                json.WriteStartObject();
                json.WriteString("space", u.Space == Hypervisor.Devices.AccessSpace.Port ? "port" : "mmio");
                json.WriteString("address", u.Where);
                json.WriteNumber("reads", u.Reads);
                json.WriteNumber("writes", u.Writes);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            if (vm.Disks.Count > 0)
            {
                json.WriteStartArray("disks");
                foreach (var d in vm.Disks)
                {
                    var s = d.Statistics;
                    json.WriteStartObject();
                    json.WriteString("name", d.Backend.Name);
                    json.WriteString("interface", Hypervisor.Devices.Storage.DiskConfig.InterfaceName(d.Interface));
                    json.WriteNumber("index", d.Index);
                    json.WriteBoolean("read_only", d.Backend.ReadOnly);
                    json.WriteNumber("sectors", d.Backend.SectorCount);
                    json.WriteNumber("reads", s.Reads);
                    json.WriteNumber("writes", s.Writes);
                    json.WriteNumber("flushes", s.Flushes);
                    json.WriteNumber("other", s.Other);
                    json.WriteNumber("errors", s.Errors);
                    json.WriteNumber("bytes_read", s.BytesRead);
                    json.WriteNumber("bytes_written", s.BytesWritten);
                    json.WriteNumber("interrupts", s.Interrupts);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
            }
            json.WriteStartObject("engine_counters");
            foreach (var c in run.Counters)
            {
                json.WriteNumber(c.Name, c.Value);
            }
            json.WriteEndObject();
            if (includeState && outcome.FinalState is { } state)
            {
                json.WritePropertyName("state");
                VcpuStateWriter.WriteJson(json, state);
            }
            json.WriteEndObject();
        }
        o.WriteLine(Encoding.UTF8.GetString(buffer.ToArray()));
        o.Flush();
    }

    private string Describe() => outcome.Kind switch
    {
        VmOutcomeKind.DebugExit => $"the guest exited with status {outcome.GuestStatus} through the debug-exit port",
        VmOutcomeKind.Halted => "the guest halted for good",
        VmOutcomeKind.TripleFault => "the guest triple-faulted",
        VmOutcomeKind.Timeout => "the guest timed out",
        VmOutcomeKind.Interrupted => "the run was interrupted (SIGINT)",
        VmOutcomeKind.Terminated => "Nestor was asked to terminate (SIGTERM)",
        VmOutcomeKind.HungUp => "Nestor's terminal hung up (SIGHUP)",
        _ => "the engine could not run the guest",
    };

    /// <summary>An exit reason as the tables and JSON spell it, e.g. <c>port-write</c>.</summary>
    public static string Name(VmExitReason r) => Kebab(r.ToString());

    private static string Kebab(string pascal)
    {
        var b = new StringBuilder();
        foreach (char c in pascal)
        {
            if (char.IsUpper(c) && b.Length > 0)
            {
                b.Append('-');
            }
            b.Append(char.ToLowerInvariant(c));
        }
        return b.ToString();
    }

    private static string Milliseconds(TimeSpan t) => t.TotalMilliseconds.ToString("0.000", CultureInfo.InvariantCulture);

    private static string Microseconds(TimeSpan t) => (t.Ticks / 10.0).ToString("0.00", CultureInfo.InvariantCulture);
}
