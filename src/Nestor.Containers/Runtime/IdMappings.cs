using System.Diagnostics;
using System.Text;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Runtime;

/// <summary>Writes a new user namespace's uid and gid maps (user_namespaces(7), "User and group ID mappings"): as
/// root, /proc/PID/uid_map and gid_map directly; unprivileged, the same for the one-line map of the caller's own ids
/// (after writing "deny" to /proc/PID/setgroups, which an unprivileged gid_map requires), and through the set-uid
/// newuidmap(1)/newgidmap(1) for maps with the caller's subordinate ids (/etc/subuid, /etc/subgid).</summary>
public static class IdMappings
{
    /// <summary>The maps a container gets when its spec has none: container root is the caller (one id).</summary>
    public static List<SpecIdMapping> CallerAsRoot(uint hostId) => [new() { ContainerID = 0, HostID = hostId, Size = 1 }];

    /// <summary>Rootless maps with subordinate ids: container 0 is the caller, 1… are the caller's subordinate range
    /// from <paramref name="subordinateFile"/> (<c>/etc/subuid</c>); just the caller when it has none.</summary>
    public static List<SpecIdMapping> WithSubordinateIds(uint hostId, string userName, string subordinateFile)
    {
        var mappings = CallerAsRoot(hostId);
        if (File.Exists(subordinateFile))
        {
            foreach (string line in File.ReadLines(subordinateFile))
            {
                string[] fields = line.Split(':');
                if (fields.Length == 3 && (fields[0] == userName || fields[0] == hostId.ToString(System.Globalization.CultureInfo.InvariantCulture)) &&
                    uint.TryParse(fields[1], out uint start) && uint.TryParse(fields[2], out uint count) && count > 0)
                {
                    mappings.Add(new SpecIdMapping { ContainerID = 1, HostID = start, Size = count });
                    break;
                }
            }
        }
        return mappings;
    }

    /// <summary>Writes both maps of process <paramref name="pid"/>.</summary>
    public static void Write(int pid, IReadOnlyList<SpecIdMapping> uidMappings, IReadOnlyList<SpecIdMapping> gidMappings)
    {
        bool root = IdentityCalls.EffectiveUserId() == 0;
        WriteOne(pid, "uid", uidMappings, root, IdentityCalls.EffectiveUserId());
        WriteOne(pid, "gid", gidMappings, root, IdentityCalls.EffectiveGroupId());
    }

    private static void WriteOne(int pid, string kind, IReadOnlyList<SpecIdMapping> mappings, bool root, uint ownId)
    {
        var text = new StringBuilder();
        foreach (var mapping in mappings)
        {
            text.Append(System.Globalization.CultureInfo.InvariantCulture, $"{mapping.ContainerID} {mapping.HostID} {mapping.Size}\n");
        }
        bool onlyOwnId = mappings.Count == 1 && mappings[0].HostID == ownId && mappings[0].Size == 1;
        if (root || onlyOwnId)
        {
            try
            {
                if (!root && kind == "gid")
                {
                    File.WriteAllText($"/proc/{pid}/setgroups", "deny");
                }
                File.WriteAllText($"/proc/{pid}/{kind}_map", text.ToString());
            }
            catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
            {
                throw new ContainerRuntimeException($"writing the {kind} map of the container's init ({text.ToString().Trim().Replace('\n', ',')}) failed: {exception.Message}", exception);
            }
            return;
        }
        // newuidmap/newgidmap check the ranges against /etc/subuid and /etc/subgid.
        string helper = kind == "uid" ? "newuidmap" : "newgidmap";
        var start = new ProcessStartInfo(helper) { UseShellExecute = false, RedirectStandardError = true };
        start.ArgumentList.Add(pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
        foreach (var mapping in mappings)
        {
            start.ArgumentList.Add(mapping.ContainerID.ToString(System.Globalization.CultureInfo.InvariantCulture));
            start.ArgumentList.Add(mapping.HostID.ToString(System.Globalization.CultureInfo.InvariantCulture));
            start.ArgumentList.Add(mapping.Size.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
        try
        {
            using var process = Process.Start(start) ?? throw new ContainerRuntimeException($"{helper} did not start");
            string error = process.StandardError.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                throw new ContainerRuntimeException($"{helper} {string.Join(' ', start.ArgumentList)} failed ({error.Trim()}): check /etc/sub{kind} for this user (install uidmap for {helper})");
            }
        }
        catch (System.ComponentModel.Win32Exception exception)
        {
            throw new ContainerRuntimeException($"{helper} is needed to map subordinate ids; install Debian's uidmap package ({exception.Message})", exception);
        }
    }
}
