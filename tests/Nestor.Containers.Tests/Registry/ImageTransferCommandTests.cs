using System.Diagnostics;
using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

/// <summary><c>nestor image pull|push|login|logout</c> run as the built command: progress on standard error, the
/// manifest digest on standard output, Docker's <c>Error: …</c> and status 125 on failure.</summary>
public class ImageTransferCommandTests(BasicAuthRegistryFixture fixture) : IClassFixture<BasicAuthRegistryFixture>
{
    private readonly RegistryServer server = fixture.Server;

    /// <summary>Runs the built nestor with <paramref name="authFile"/> as REGISTRY_AUTH_FILE (pull and push read it
    /// as Podman does; a missing file when null) and no other credentials of this machine.</summary>
    private static (int Status, string Output, string Error) Nestor(string? authFile, string? input, params string[] arguments)
    {
        var start = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "nestor"), arguments)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        start.Environment["REGISTRY_AUTH_FILE"] = authFile ?? "/nonexistent/nestor-test-auth.json";
        start.Environment["HOME"] = "/nonexistent";
        start.Environment.Remove("XDG_RUNTIME_DIR");
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (input is not null)
        {
            process.StandardInput.Write(input);
        }
        process.StandardInput.Close();
        if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"nestor {string.Join(' ', arguments)} did not finish");
        }
        return (process.ExitCode, output.Result, error.Result);
    }

    /// <summary>Login with the password on standard input stores it in --authfile; with it push and pull work and
    /// print the digest; logout removes it, after which a pull is refused with 125 and the advice to log in.</summary>
    [Fact]
    public void LoginPushPullLogout()
    {
        using var directory = new TestImages.TemporaryDirectory();
        string layout = Path.Combine(directory.Path, "layout");
        string store = Path.Combine(directory.Path, "store");
        string authFile = Path.Combine(directory.Path, "auth.json");
        var made = TestImages.AddBusybox(new OciLayoutContentStore(layout), "local/cli", "cli");
        string reference = $"{server.Address}/cli/busybox:v1";

        var login = Nestor(null, server.User!.Password + "\n", "image", "login", "--authfile", authFile, "-u", server.User.UserName, "--password-stdin", server.Address);
        Assert.True(login.Status == 0, login.Error);
        Assert.Contains("Login Succeeded", login.Output);
        Assert.Equal(server.User, new RegistryCredentialStore([authFile]).Find(server.Address));

        var push = Nestor(authFile, null, "image", "push", "--layout", layout, "local/cli", reference);
        Assert.True(push.Status == 0, push.Error);
        Assert.Equal(made.ManifestDigest, push.Output.Trim());
        Assert.Contains("Copying blob " + made.LayerDigest[..19], push.Error);

        var pull = Nestor(authFile, null, "image", "--store", store, "pull", reference);
        Assert.True(pull.Status == 0, pull.Error);
        Assert.Equal(made.ManifestDigest, pull.Output.Trim());
        Assert.Contains($"{server.Address}/cli/busybox", Nestor(null, null, "image", "--store", store, "ls").Output);

        var logout = Nestor(null, null, "image", "logout", "--authfile", authFile, server.Address);
        Assert.True(logout.Status == 0, logout.Error);
        Assert.Null(new RegistryCredentialStore([authFile]).Find(server.Address));
        var refused = Nestor(authFile, null, "image", "--store", store, "pull", reference);
        Assert.Equal(125, refused.Status);
        Assert.StartsWith("Error: ", refused.Error);
        Assert.Contains("log in", refused.Error);
    }

    /// <summary>A wrong password is refused by login with 125 and nothing is stored.</summary>
    [Fact]
    public void LoginWithAWrongPasswordFails()
    {
        using var directory = new TestImages.TemporaryDirectory();
        string authFile = Path.Combine(directory.Path, "auth.json");
        var login = Nestor(null, "wrong\n", "image", "login", "--authfile", authFile, "-u", server.User!.UserName, "--password-stdin", server.Address);
        Assert.Equal(125, login.Status);
        Assert.StartsWith("Error: ", login.Error);
        Assert.False(File.Exists(authFile));
    }

    /// <summary>A tag the registry lacks and a port nothing listens on: 125 with what happened.</summary>
    [Fact]
    public void FailuresExitWith125()
    {
        using var directory = new TestImages.TemporaryDirectory();
        string authFile = Path.Combine(directory.Path, "auth.json");
        RegistryCredentialStore.Save(authFile, server.Address, server.User!);
        string store = Path.Combine(directory.Path, "store");

        var missing = Nestor(authFile, null, "image", "--store", store, "pull", $"{server.Address}/cli/none:nope");
        Assert.Equal(125, missing.Status);
        Assert.Contains($"Error: no such image or tag in {server.Address}", missing.Error);

        int port = RegistryServer.FreePort();
        var refused = Nestor(null, null, "image", "--store", store, "pull", $"127.0.0.1:{port}/a/b");
        Assert.Equal(125, refused.Status);
        Assert.Contains("connection refused", refused.Error);
    }
}
