namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>Parses Dockerfile text into a <see cref="Dockerfile"/> as the Dockerfile reference describes.</summary>
public static class DockerfileParser
{
    /// <summary>Parses <paramref name="text"/>; <paramref name="fileName"/> names the file in errors. Throws
    /// <see cref="DockerfileException"/> with the file and line of the first error.</summary>
    public static Dockerfile Parse(string text, string fileName) =>
        throw new DockerfileException(new SourceLocation(fileName, 1), "the parser is not written yet " + text.Length);
}
