namespace Nestor.Containers.Registry;

/// <summary>A manifest held in a local store: its bytes, media type and digest.</summary>
public sealed record LocalManifest(byte[] Bytes, string MediaType, string Digest);

/// <summary>What pull and push need of a local content-addressed store (blobs by digest, manifests by reference):
/// <see cref="ImageStoreContentStore"/> over the local image store, <see cref="OciLayoutContentStore"/> over any OCI image
/// layout directory.</summary>
public interface IImageContentStore
{
    /// <summary>Whether the blob <paramref name="digest"/> is stored (complete and verified).</summary>
    bool HasBlob(string digest);

    /// <summary>Reads the blob <paramref name="digest"/>.</summary>
    Stream OpenBlob(string digest);

    /// <summary>A new, empty file on the store's file system for a blob being received; the caller writes and
    /// verifies it, then <see cref="CommitBlob"/> moves it in, or deletes it: a half blob is never kept.</summary>
    string CreateIncomingBlobFile();

    /// <summary>Moves the verified file <paramref name="incomingFile"/> in as the blob <paramref name="digest"/>.</summary>
    void CommitBlob(string incomingFile, string digest);

    /// <summary>Stores <paramref name="manifest"/> as a blob and names it <paramref name="reference"/> (a fully
    /// qualified <see cref="Images.ImageReference"/>), replacing what that name meant before; its blobs are stored first.</summary>
    void AddManifest(LocalManifest manifest, string reference);

    /// <summary>The manifest <paramref name="reference"/> names (a reference in any form Docker accepts, or a
    /// manifest digest), or null.</summary>
    LocalManifest? FindManifest(string reference);

    /// <summary>The references that name the manifest <paramref name="digest"/>.</summary>
    IReadOnlyList<string> ReferencesOf(string digest);
}
