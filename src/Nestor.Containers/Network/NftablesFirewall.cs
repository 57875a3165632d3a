using System.Diagnostics;
using System.Net;

namespace Nestor.Containers.Network;

/// <summary>The bridge's NAT in one nftables table of its own (<c>table ip nestor</c>), driven by <c>nft -f -</c>
/// text (no libnftables binding): masquerade of the containers' traffic leaving by another interface, forward accept
/// to and from the bridge, and DNAT of published ports from two maps, so that publishing or withdrawing a port is one
/// element added or deleted and never a rule to find by handle:
/// <c>ports_any</c> (protocol . host port → container address . port, for any local address, <c>fib daddr type
/// local</c>) and <c>ports_at</c> (host address . protocol . port → …, for <c>-p HOSTIP:…</c>). Only traffic that
/// comes in from outside passes prerouting: connections made on this host to its loopback never see a DNAT rule
/// (without route_localnet), which is why the port forwarder exists.</summary>
internal sealed class NftablesFirewall(string tableName, string bridgeName, Ipv4Subnet subnet)
{
    public string TableName { get; } = tableName;

    /// <summary>Creates the table if it is not there. Its existing elements (other containers' ports) are kept.</summary>
    public void Ensure()
    {
        if (Nft(["list", "table", "ip", TableName], input: null).ExitCode == 0)
        {
            return;
        }
        string definition = $$"""
            table ip {{TableName}} {
              map ports_any { type inet_proto . inet_service : ipv4_addr . inet_service; }
              map ports_at { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
              chain prerouting {
                type nat hook prerouting priority dstnat; policy accept;
                fib daddr type local dnat ip to meta l4proto . th dport map @ports_any
                dnat ip to ip daddr . meta l4proto . th dport map @ports_at
              }
              chain postrouting {
                type nat hook postrouting priority srcnat; policy accept;
                ip saddr {{subnet}} oifname != "{{bridgeName}}" masquerade
              }
              chain forward {
                type filter hook forward priority filter; policy accept;
                iifname "{{bridgeName}}" accept
                oifname "{{bridgeName}}" accept
              }
            }
            """;
        Check(Nft(["-f", "-"], definition), $"creating nftables table ip {TableName}");
    }

    /// <summary>Publishes <paramref name="port"/> to <paramref name="containerAddress"/>.</summary>
    public void AddPort(PortMapping port, IPAddress containerAddress) =>
        Check(Nft(["-f", "-"], $"add element ip {TableName} {Element(port, containerAddress)}\n"), $"publishing port {port.HostPort}/{port.Protocol}");

    /// <summary>Withdraws <paramref name="port"/>; false if it was not published (already withdrawn, or no table).</summary>
    public bool RemovePort(PortMapping port) => Nft(["-f", "-"], $"delete element ip {TableName} {Element(port, null)}\n").ExitCode == 0;

    /// <summary>The table's text as <c>nft list table</c> prints it, or null if there is none (for tests and
    /// <c>inspect --explain</c>).</summary>
    public string? List()
    {
        var outcome = Nft(["list", "table", "ip", TableName], input: null);
        return outcome.ExitCode == 0 ? outcome.Output : null;
    }

    /// <summary>Deletes the whole table (tests' clean-up; the engine keeps it, like the bridge).</summary>
    public void Delete() => Nft(["delete", "table", "ip", TableName], input: null);

    private static bool IsAnyAddress(PortMapping port) => string.IsNullOrEmpty(port.HostAddress) || port.HostAddress == "0.0.0.0";

    private static string Element(PortMapping port, IPAddress? target)
    {
        string key = IsAnyAddress(port) ? $"{port.Protocol} . {port.HostPort}" : $"{port.HostAddress} . {port.Protocol} . {port.HostPort}";
        string value = target is null ? "" : $" : {target} . {port.ContainerPort}";
        return $"{(IsAnyAddress(port) ? "ports_any" : "ports_at")} {{ {key}{value} }}";
    }

    private static void Check((int ExitCode, string Output, string Errors) outcome, string operation)
    {
        if (outcome.ExitCode != 0)
        {
            throw new ContainerNetworkException($"{operation} failed: nft said {outcome.Errors.Trim()}",
                "Check that nftables is installed (Debian's nftables) and that this runs as root");
        }
    }

    private static (int ExitCode, string Output, string Errors) Nft(string[] arguments, string? input)
    {
        var start = new ProcessStartInfo("nft") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new ContainerNetworkException("nft cannot be started", "Install nftables (apt-get install nftables)", e);
        }
        using (process)
        {
            if (input is not null)
            {
                process.StandardInput.Write(input);
            }
            process.StandardInput.Close();
            var output = process.StandardOutput.ReadToEndAsync();
            string errors = process.StandardError.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, output.Result, errors);
        }
    }
}
