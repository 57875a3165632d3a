using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Tests.Runtime;

public class RuntimeSpecTests
{
    /// <summary>The names config.json uses are the specification's, including its irregular ones (containerID,
    /// hostID, blockIO, disableOOMKiller), in both directions.</summary>
    [Fact]
    public void SpecificationNamesRoundTrip()
    {
        const string json = """
            {
              "ociVersion": "1.2.0",
              "root": { "path": "rootfs", "readonly": true },
              "process": { "user": { "uid": 0, "gid": 0 }, "args": ["sh"], "cwd": "/",
                           "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 } ] },
              "linux": {
                "uidMappings": [ { "containerID": 0, "hostID": 100000, "size": 65536 } ],
                "resources": { "blockIO": { "weight": 500 }, "memory": { "limit": 1048576, "disableOOMKiller": false } },
                "timeOffsets": { "monotonic": { "secs": 86400, "nanosecs": 0 } }
              }
            }
            """;
        var spec = RuntimeSpec.Parse(json);
        Assert.Equal(100000u, spec.Linux!.UidMappings![0].HostID);
        Assert.Equal((ushort)500, spec.Linux.Resources!.BlockIO!.Weight);
        Assert.Equal(86400, spec.Linux.TimeOffsets!["monotonic"].Secs);
        string written = spec.ToJson();
        foreach (var name in new[] { "\"containerID\"", "\"hostID\"", "\"blockIO\"", "\"disableOOMKiller\"", "\"ociVersion\"", "\"timeOffsets\"" })
        {
            Assert.Contains(name, written);
        }
        Assert.DoesNotContain("\"hostname\"", written); // absent optional fields stay absent
    }
}
