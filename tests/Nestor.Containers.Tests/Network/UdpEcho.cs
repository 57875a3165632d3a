namespace Nestor.Containers.Tests.Network;

/// <summary>A tiny UDP echo server and client (busybox's nc has no UDP), compiled once per test run with gcc:
/// <c>udp-echo serve PORT</c> answers every datagram with itself; <c>udp-echo ask ADDRESS PORT TEXT</c> sends TEXT and
/// prints the answer, or fails after two seconds without one.</summary>
internal static class UdpEcho
{
    private const string Source = """
        #include <arpa/inet.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/socket.h>
        #include <sys/time.h>
        #include <unistd.h>

        int main(int argc, char **argv) {
            int fd = socket(AF_INET, SOCK_DGRAM, 0);
            struct sockaddr_in address = { .sin_family = AF_INET };
            char buffer[2048];
            if (argc == 3 && strcmp(argv[1], "serve") == 0) {
                address.sin_port = htons(atoi(argv[2]));
                if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0) { perror("bind"); return 1; }
                for (;;) {
                    struct sockaddr_in peer; socklen_t length = sizeof peer;
                    ssize_t count = recvfrom(fd, buffer, sizeof buffer, 0, (struct sockaddr *)&peer, &length);
                    if (count > 0) sendto(fd, buffer, count, 0, (struct sockaddr *)&peer, length);
                }
            }
            if (argc == 5 && strcmp(argv[1], "ask") == 0) {
                struct timeval limit = { .tv_sec = 2 };
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
                inet_pton(AF_INET, argv[2], &address.sin_addr);
                address.sin_port = htons(atoi(argv[3]));
                sendto(fd, argv[4], strlen(argv[4]), 0, (struct sockaddr *)&address, sizeof address);
                ssize_t count = recv(fd, buffer, sizeof buffer - 1, 0);
                if (count < 0) { perror("recv"); return 1; }
                buffer[count] = 0;
                printf("%s\n", buffer);
                return 0;
            }
            fprintf(stderr, "usage: udp-echo serve PORT | ask ADDRESS PORT TEXT\n");
            return 2;
        }
        """;

    private static readonly Lazy<string> Built = new(Build);

    /// <summary>The built program's path (a static binary in a world-readable directory).</summary>
    public static string Program => Built.Value;

    private static string Build()
    {
        string directory = Path.Combine(Path.GetTempPath(), $"nestor-udp-echo-{Environment.ProcessId}");
        Directory.CreateDirectory(directory);
        string source = Path.Combine(directory, "udp-echo.c");
        string program = Path.Combine(directory, "udp-echo");
        File.WriteAllText(source, Source);
        HostProcess.Check("gcc", "-static", "-O1", "-o", program, source);
        HostProcess.Check("chmod", "-R", "a+rX", directory);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Directory.Delete(directory, recursive: true);
        return program;
    }
}
