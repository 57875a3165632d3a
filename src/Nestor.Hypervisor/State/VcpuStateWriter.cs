using System.Text;
using System.Text.Json;

namespace Nestor.Hypervisor.State;

/// <summary>Writes a <see cref="VcpuState"/> as JSON (64-bit values as <c>"0x…"</c> strings, so no JSON reader loses
/// precision) or as a register listing for people.</summary>
public static class VcpuStateWriter
{
    /// <summary>Writes the state as one JSON object.</summary>
    public static void WriteJson(Utf8JsonWriter json, VcpuState s)
    {
        json.WriteStartObject();
        foreach (var (name, value) in s.GeneralRegisters)
        {
            json.WriteString(name, Hex(value));
        }
        json.WriteString("rip", Hex(s.Rip));
        json.WriteString("rflags", Hex(s.Rflags));
        json.WriteString("cr0", Hex(s.Cr0));
        json.WriteString("cr2", Hex(s.Cr2));
        json.WriteString("cr3", Hex(s.Cr3));
        json.WriteString("cr4", Hex(s.Cr4));
        json.WriteString("cr8", Hex(s.Cr8));
        json.WriteString("efer", Hex(s.Efer));
        json.WriteNumber("cpl", s.PrivilegeLevel);
        json.WriteStartObject("segments");
        foreach (var (name, seg) in s.Segments)
        {
            json.WriteStartObject(name);
            json.WriteString("selector", Hex(seg.Selector));
            json.WriteString("base", Hex(seg.Base));
            json.WriteString("limit", Hex(seg.Limit));
            json.WriteNumber("type", seg.Type);
            json.WriteNumber("dpl", seg.PrivilegeLevel);
            json.WriteBoolean("present", seg.Present);
            json.WriteBoolean("long", seg.LongMode);
            json.WriteBoolean("unusable", seg.Unusable);
            json.WriteEndObject();
        }
        json.WriteEndObject();
        WriteTable(json, "gdtr", s.Gdtr);
        WriteTable(json, "idtr", s.Idtr);
        json.WriteStartObject("msrs");
        json.WriteString("fs_base", Hex(s.FsBase));
        json.WriteString("gs_base", Hex(s.GsBase));
        json.WriteString("kernel_gs_base", Hex(s.KernelGsBase));
        json.WriteString("star", Hex(s.Star));
        json.WriteString("lstar", Hex(s.LongStar));
        json.WriteString("sfmask", Hex(s.SyscallFlagMask));
        json.WriteEndObject();
        json.WriteEndObject();
    }

    /// <summary>The state as an indented JSON document.</summary>
    public static string ToJson(VcpuState s)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            WriteJson(json, s);
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>A compact register listing, as printed after a triple fault.</summary>
    public static string ToText(VcpuState s)
    {
        var b = new StringBuilder();
        int column = 0;
        foreach (var (name, value) in s.GeneralRegisters)
        {
            b.Append($"{name,4}={value:x16}");
            b.Append(++column % 4 == 0 ? "\n" : "  ");
        }
        b.AppendLine($" rip={s.Rip:x16}  rflags={s.Rflags:x8}  cpl={s.PrivilegeLevel}");
        b.AppendLine($" cr0={s.Cr0:x16}   cr2={s.Cr2:x16}   cr3={s.Cr3:x16}   cr4={s.Cr4:x16}");
        b.AppendLine($"efer={s.Efer:x16}    cs={s.Cs.Selector:x4}  ss={s.Ss.Selector:x4}  ds={s.Ds.Selector:x4}  tr={s.Tr.Selector:x4}");
        b.Append($"gdtr={s.Gdtr.Base:x16}/{s.Gdtr.Limit:x4}  idtr={s.Idtr.Base:x16}/{s.Idtr.Limit:x4}");
        return b.ToString();
    }

    private static void WriteTable(Utf8JsonWriter json, string name, DescriptorTableState t)
    {
        json.WriteStartObject(name);
        json.WriteString("base", Hex(t.Base));
        json.WriteString("limit", Hex(t.Limit));
        json.WriteEndObject();
    }

    private static string Hex(ulong v) => "0x" + v.ToString("x");
}
