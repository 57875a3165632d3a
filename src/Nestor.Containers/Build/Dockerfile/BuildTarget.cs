namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>What <c>--target</c> builds: the target stage and every stage it needs, through <c>FROM stage</c>,
/// <c>COPY --from=stage</c> and <c>RUN --mount=...,from=stage</c> (names expanded as the build will expand them).
/// Stages nothing needs are not built, as BuildKit skips them.</summary>
public static class BuildTarget
{
    /// <summary>The stages to build for <paramref name="target"/> (a stage name or index; null for the last
    /// stage), in file order (every dependency comes before its user). Throws <see cref="DockerfileException"/>
    /// for an unknown target or a reference to the same or a later stage.</summary>
    public static IReadOnlyList<BuildStage> StagesFor(BuildVariables variables, string? target)
    {
        var dockerfile = variables.Dockerfile;
        BuildStage final = target is null ? dockerfile.FinalStage
            : dockerfile.Stages.FirstOrDefault(s => string.Equals(s.Name, target, StringComparison.OrdinalIgnoreCase))
              ?? throw new DockerfileException(new SourceLocation(dockerfile.FileName, 0),
                  $"the target stage '{target}' is not in the file",
                  dockerfile.Stages.Any(s => s.Name is not null)
                      ? "stages are " + string.Join(", ", dockerfile.Stages.Where(s => s.Name is not null).Select(s => s.Name))
                      : "name a stage with FROM IMAGE AS NAME");
        var needed = new SortedDictionary<int, BuildStage>();
        var pending = new Stack<BuildStage>();
        pending.Push(final);
        while (pending.Count > 0)
        {
            var stage = pending.Pop();
            if (!needed.TryAdd(stage.Index, stage))
            {
                continue;
            }
            foreach (var dependency in Dependencies(variables, stage))
            {
                pending.Push(dependency);
            }
        }
        return [.. needed.Values];
    }

    /// <summary>The stages <paramref name="stage"/> uses directly: its FROM base if that names an earlier stage,
    /// and the stages its <c>--from</c> flags name.</summary>
    public static IReadOnlyList<BuildStage> Dependencies(BuildVariables variables, BuildStage stage)
    {
        var result = new List<BuildStage>();
        if (ResolveBase(variables, stage) is { } baseStage)
        {
            result.Add(baseStage);
        }
        var scope = variables.BeginStage(stage, []);
        foreach (var instruction in stage.Instructions)
        {
            var expanded = scope.Apply(instruction);
            IEnumerable<string> references = expanded is RunInstruction
                ? DockerfileParser.StageReferences(instruction).Select(scope.ExpandWord)
                : DockerfileParser.StageReferences(expanded);
            foreach (string reference in references)
            {
                if (ResolveReference(variables.Dockerfile, reference, stage, instruction.Location) is { } used)
                {
                    result.Add(used);
                }
            }
        }
        return result;
    }

    /// <summary>The earlier stage a FROM names (after expansion), or null when it names an image.</summary>
    public static BuildStage? ResolveBase(BuildVariables variables, BuildStage stage)
    {
        string image = variables.ExpandFrom(stage).BaseImage;
        return variables.Dockerfile.Stages.FirstOrDefault(s => s.Index < stage.Index
            && string.Equals(s.Name, image, StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>The stage an expanded <c>--from</c> value names from inside <paramref name="user"/> (an
    /// earlier stage's name or index), or null when it names an image. Throws <see cref="DockerfileException"/>
    /// at <paramref name="location"/> when it names <paramref name="user"/> itself or a later stage.</summary>
    public static BuildStage? ResolveReference(Dockerfile dockerfile, string reference, BuildStage user,
        SourceLocation location)
    {
        var stage = dockerfile.FindStage(reference);
        if (stage is not null && stage.Index >= user.Index)
        {
            throw new DockerfileException(location,
                stage.Index == user.Index
                    ? $"--from={reference} names the stage it is in"
                    : $"--from={reference} names a later stage (stage {stage.Index}); a stage can only use stages before it",
                "move the stage it copies from above this one");
        }
        return stage;
    }
}
