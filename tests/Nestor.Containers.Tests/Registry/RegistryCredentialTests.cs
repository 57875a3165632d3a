using System.Text;
using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

public class RegistryCredentialTests
{
    private static string Encode(string text) => Convert.ToBase64String(Encoding.UTF8.GetBytes(text));

    /// <summary>containers-auth.json and Docker's config.json keep base64 "user:password" per registry; the first
    /// file naming the registry wins, Docker Hub is found under its legacy key, and a password may hold colons.</summary>
    [Fact]
    public void ReadsAuthFilesInOrder()
    {
        using var directory = new TestImages.TemporaryDirectory();
        string podman = Path.Combine(directory.Path, "auth.json");
        string docker = Path.Combine(directory.Path, "config.json");
        File.WriteAllText(podman, $$"""{"auths":{"127.0.0.1:5000":{"auth":"{{Encode("alice:pa:ss")}}"} } }""");
        File.WriteAllText(docker, $$"""{"auths":{"127.0.0.1:5000":{"auth":"{{Encode("bob:x")}}"},"https://index.docker.io/v1/":{"auth":"{{Encode("carol:y")}}"},"quay.io":{"auth":"not base64!"} } }""");
        var store = new RegistryCredentialStore([Path.Combine(directory.Path, "missing.json"), podman, docker]);

        Assert.Equal(new RegistryCredential("alice", "pa:ss"), store.Find("127.0.0.1:5000"));
        Assert.Equal(new RegistryCredential("carol", "y"), store.Find("docker.io"));
        Assert.Null(store.Find("quay.io"));
        Assert.Null(store.Find("example.com"));
        Assert.Equal(Encode("alice:pa:ss"), new RegistryCredential("alice", "pa:ss").BasicParameter);
    }

    /// <summary>REGISTRY_AUTH_FILE comes before the other places.</summary>
    [Fact]
    public void EnvironmentAuthFileComesFirst()
    {
        using var directory = new TestImages.TemporaryDirectory();
        string file = Path.Combine(directory.Path, "auth.json");
        File.WriteAllText(file, $$"""{"auths":{"nestor-test.example":{"auth":"{{Encode("dave:z")}}"} } }""");
        string? before = Environment.GetEnvironmentVariable("REGISTRY_AUTH_FILE");
        try
        {
            Environment.SetEnvironmentVariable("REGISTRY_AUTH_FILE", file);
            Assert.Equal(new RegistryCredential("dave", "z"), RegistryCredentialStore.FromEnvironment().Find("nestor-test.example"));
        }
        finally
        {
            Environment.SetEnvironmentVariable("REGISTRY_AUTH_FILE", before);
        }
    }

    /// <summary>WWW-Authenticate parameters: quoted values may hold commas and escaped quotes.</summary>
    [Fact]
    public void ParsesChallengeParameters()
    {
        var parameters = RegistryClient.ParseChallengeParameters(
            "realm=\"https://auth.example/token\",service=\"registry.example\",scope=\"repository:a/b:pull,push\", error=\"x\\\"y\"");
        Assert.Equal("https://auth.example/token", parameters["realm"]);
        Assert.Equal("registry.example", parameters["service"]);
        Assert.Equal("repository:a/b:pull,push", parameters["scope"]);
        Assert.Equal("x\"y", parameters["error"]);
    }
}

public class RegistryLoginFileTests
{
    /// <summary>Save adds the registry's entry and keeps what other tools wrote; the file is 0600; Remove takes the
    /// entry out and says whether there was one.</summary>
    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void SaveKeepsOtherEntriesAndRemoveTakesItsOut()
    {
        using var directory = new TestImages.TemporaryDirectory();
        string file = Path.Combine(directory.Path, "containers", "auth.json");
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        File.WriteAllText(file, """{"auths":{"quay.io":{"auth":"eDp5"}},"credHelpers":{"gcr.io":"gcloud"}}""");

        RegistryCredentialStore.Save(file, "127.0.0.1:5000", new RegistryCredential("alice", "secret"));

        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
        var store = new RegistryCredentialStore([file]);
        Assert.Equal(new RegistryCredential("alice", "secret"), store.Find("127.0.0.1:5000"));
        Assert.Equal(new RegistryCredential("x", "y"), store.Find("quay.io"));
        Assert.Contains("gcloud", File.ReadAllText(file));
        Assert.True(RegistryCredentialStore.Remove(file, "127.0.0.1:5000"));
        Assert.False(RegistryCredentialStore.Remove(file, "127.0.0.1:5000"));
        Assert.Null(new RegistryCredentialStore([file]).Find("127.0.0.1:5000"));
        Assert.NotNull(new RegistryCredentialStore([file]).Find("quay.io"));
    }
}
