using Nestor.Containers.Build.Dockerfiles;

namespace Nestor.Containers.Tests.Build.Dockerfiles;

/// <summary>Property tests over generated Dockerfiles: canonical text reads back as the same instructions, and
/// the canonical text of expanded instructions (the cache key) reads back as the same values.</summary>
public class CanonicalTextTests
{
    private static readonly string[] Atoms = ["a", "b", "/x", "$V", "${V:-d}", "\"q q\"", "'s $V'", "a\\ b", "=", "é", "1"];

    // Paths in COPY's shell form are split at white space before expansion (as Docker's), so path words have none.
    private static readonly string[] PathAtoms = ["a", "b", "/x", "$V", "${V:-d}", "é", "1", "\\$V"];

    private static string Word(Random random, int atoms = 3) =>
        string.Concat(Enumerable.Range(0, random.Next(1, atoms + 1)).Select(_ => PathAtoms[random.Next(PathAtoms.Length)]));

    private static string Value(Random random) =>
        string.Concat(Enumerable.Range(0, random.Next(1, 4)).Select(_ => Atoms[random.Next(Atoms.Length)]));

    private static string Line(Random random) => random.Next(14) switch
    {
        0 => $"RUN {Value(random)} && echo {Value(random)}",
        1 => $"RUN [\"/bin/sh\", \"-c\", \"{Value(random).Replace("\"", "\\\"", StringComparison.Ordinal)}\"]",
        2 => $"COPY --chown={Word(random)} {Word(random)} {Word(random)} /dest/",
        3 => $"ENV K{random.Next(3)}={Value(random)} L={Value(random)}",
        4 => $"LABEL \"k.{random.Next(9)}\"={Value(random)}",
        5 => $"ARG A{random.Next(3)}={Value(random)}",
        6 => $"WORKDIR /w{Word(random)}",
        7 => $"USER u{random.Next(100)}",
        8 => $"EXPOSE {random.Next(1, 65535)}/udp {random.Next(1, 65535)}",
        9 => $"VOLUME [\"/v{random.Next(9)}\"]",
        10 => $"CMD {Value(random)}",
        11 => $"HEALTHCHECK --interval={random.Next(1, 90)}s CMD check {Value(random)}",
        12 => "RUN <<EOF\necho " + Value(random) + "\nEOF",
        _ => $"ADD {Word(random)} /a{random.Next(9)}",
    };

    private static string File(Random random)
    {
        var lines = new List<string> { "ARG V=v" + random.Next(9) };
        for (int stage = 0; stage < random.Next(1, 3); stage++)
        {
            lines.Add($"FROM base{stage}:$V AS s{stage}");
            if (random.Next(2) == 0)
            {
                lines.Add("ARG V");
            }
            lines.AddRange(Enumerable.Range(0, random.Next(1, 8)).Select(_ => Line(random)));
        }
        return string.Join('\n', lines) + "\n";
    }

    /// <summary>Canonical text of a parsed file parses to instructions with the same canonical text and the same
    /// fields (compared through their canonical text and expansions).</summary>
    [Fact]
    public void CanonicalTextReadsBack()
    {
        var random = new Random(20261201);
        for (int run = 0; run < 300; run++)
        {
            string text = File(random);
            var file = DockerfileParser.Parse(text, "Dockerfile");
            string canonical = file.ToCanonicalText();
            var again = DockerfileParser.Parse(canonical, "Dockerfile");
            Assert.Equal(canonical, again.ToCanonicalText());
            Assert.Equal(file.Stages.Count, again.Stages.Count);
            for (int s = 0; s < file.Stages.Count; s++)
            {
                Assert.Equal(file.Stages[s].Instructions.Select(i => i.GetType()), again.Stages[s].Instructions.Select(i => i.GetType()));
                Assert.Equal(Expanded(file, s), Expanded(again, s));
            }
        }
    }

    /// <summary>The canonical text of an expanded instruction reads back, with nothing set, as the same expanded
    /// values: quoting in the cache key is faithful.</summary>
    [Fact]
    public void ExpandedCanonicalTextIsFaithful()
    {
        var random = new Random(17);
        for (int run = 0; run < 300; run++)
        {
            var file = DockerfileParser.Parse(File(random), "Dockerfile");
            var variables = new BuildVariables(file, new Dictionary<string, string> { ["V"] = "x y" });
            foreach (var stage in file.Stages)
            {
                var scope = variables.BeginStage(stage, []);
                foreach (var instruction in stage.Instructions)
                {
                    var expanded = scope.Apply(instruction);
                    string key = expanded.ToCanonicalText();
                    var reread = Assert.Single(DockerfileParser.Parse("FROM a\n" + key, "Dockerfile").FinalStage.Instructions);
                    Assert.Equal(key, reread.Expand(ShellWordExpansion.Empty()).ToCanonicalText());
                }
            }
        }
    }

    /// <summary>Different values give different cache keys.</summary>
    [Fact]
    public void ExpansionChangesTheKey()
    {
        var file = DockerfileParser.Parse("FROM a\nARG D\nWORKDIR /$D\nCOPY a b/", "Dockerfile");
        string Key(string value)
        {
            var scope = new BuildVariables(file, new Dictionary<string, string> { ["D"] = value }).BeginStage(file.FinalStage, []);
            return string.Join('\n', file.FinalStage.Instructions.Select(i => scope.Apply(i).ToCanonicalText()));
        }
        Assert.NotEqual(Key("x"), Key("y"));
        Assert.Equal(Key("x"), Key("x"));
        Assert.Contains("WORKDIR \"/x y\"", Key("x y"));
    }

    private static List<string> Expanded(Dockerfile file, int stage)
    {
        var variables = new BuildVariables(file, new Dictionary<string, string>());
        var scope = variables.BeginStage(file.Stages[stage], []);
        return [variables.ExpandFrom(file.Stages[stage]).ToCanonicalText(),
            .. file.Stages[stage].Instructions.Select(i => scope.Apply(i).ToCanonicalText())];
    }
}
