using Nestor.Host;
namespace Nestor.Containers.Storage;

/// <summary>How a rootless user's host ids appear inside its containers (user_namespaces(7), subuid(5)): the user is
/// container id 0 and its subordinate range is container ids 1 and up, as podman maps them. A layer made from files a
/// rootless container wrote records the container's ids, not the host's, so that the image means the same anywhere.</summary>
public sealed record IdMapping(uint HostUid, uint HostGid, uint SubordinateUidStart, uint SubordinateUidCount,
    uint SubordinateGidStart, uint SubordinateGidCount)
{
    /// <summary>The mapping of the calling user (its first ranges of /etc/subuid and /etc/subgid, none if it has
    /// none); null for root, whose ids are the containers' own.</summary>
    public static IdMapping? ForCurrentUser()
    {
        if (Environment.IsPrivilegedProcess)
        {
            return null;
        }
        uint uid = IdentityCalls.EffectiveUserId(), gid = IdentityCalls.EffectiveGroupId();
        string user = Environment.UserName;
        var (uidStart, uidCount) = FirstRange("/etc/subuid", user, uid);
        var (gidStart, gidCount) = FirstRange("/etc/subgid", user, uid);
        return new IdMapping(uid, gid, uidStart, uidCount, gidStart, gidCount);
    }

    private static (uint Start, uint Count) FirstRange(string file, string user, uint uid)
    {
        if (!File.Exists(file))
        {
            return (0, 0);
        }
        foreach (var line in File.ReadLines(file))
        {
            var fields = line.Split(':');
            if (fields.Length == 3 && (fields[0] == user || fields[0] == uid.ToString(System.Globalization.CultureInfo.InvariantCulture))
                && uint.TryParse(fields[1], out uint start) && uint.TryParse(fields[2], out uint count))
            {
                return (start, count);
            }
        }
        return (0, 0);
    }

    /// <summary>The container uid of a host uid (unmapped ids become 65534, the overflow id of user_namespaces(7)).</summary>
    public uint ContainerUid(uint host) => Map(host, HostUid, SubordinateUidStart, SubordinateUidCount);

    /// <summary>The container gid of a host gid.</summary>
    public uint ContainerGid(uint host) => Map(host, HostGid, SubordinateGidStart, SubordinateGidCount);

    private static uint Map(uint host, uint self, uint start, uint count) =>
        host == self ? 0 : host >= start && host - start < count ? host - start + 1 : 65534;
}
