import Foundation

/// A parsed `--repo` value: a path, a `file://` URL, or (later) `s3://bucket/prefix`.
public enum RepositoryLocation: Equatable, Sendable, CustomStringConvertible {
    case local(path: String)
    case s3(bucket: String, prefix: String)

    /// Parses a repository address.
    ///
    /// - Throws: `StorageError.invalidLocation` naming the problem and the accepted forms.
    public init(parsing text: String) throws {
        // Byte-exact: a trailing space is part of a directory name, not noise to trim away.
        if text.allSatisfy({ $0 == " " }) {
            throw StorageError(.invalidLocation, object: "--repo", message: "repository address is empty",
                               hint: "pass --repo /path/to/repository, --repo file:///path or --repo s3://bucket/prefix")
        }
        // Bytes that are not UTF-8 reach us already replaced by U+FFFD: using the result would put
        // the backup in another directory than the one named, so refuse instead.
        if text.unicodeScalars.contains("\u{FFFD}") {
            throw StorageError(.invalidLocation, object: "--repo", message: "repository path contains bytes that are not UTF-8",
                               hint: "rename the directory, or point --repo at a symlink with a UTF-8 name")
        }
        if text.hasPrefix("file://") {
            let path = String(text.dropFirst("file://".count))
            guard path.hasPrefix("/") else {
                throw StorageError(.invalidLocation, object: text, message: "file:// URL must hold an absolute path",
                                   hint: "write file:///absolute/path (three slashes)")
            }
            self = .local(path: path.removingPercentEscapes())
        } else if text.hasPrefix("s3://") {
            let rest = text.dropFirst("s3://".count)
            let bucket = String(rest.prefix { $0 != "/" })
            var prefix = String(rest.dropFirst(bucket.count))
            while prefix.hasPrefix("/") { prefix.removeFirst() }
            while prefix.hasSuffix("/") { prefix.removeLast() }
            guard bucket.count >= 3 else {
                throw StorageError(.invalidLocation, object: text, message: "S3 bucket name must have at least 3 characters",
                                   hint: "write s3://bucket/prefix")
            }
            self = .s3(bucket: bucket, prefix: prefix)
        } else if let scheme = text.range(of: "://") {
            throw StorageError(.invalidLocation, object: text,
                               message: "unsupported repository scheme '\(text[..<scheme.lowerBound])'",
                               hint: "use a path, file:///path or s3://bucket/prefix")
        } else {
            self = .local(path: text)
        }
    }

    public var description: String {
        switch self {
        case .local(let path): return path
        case .s3(let bucket, let prefix): return prefix.isEmpty ? "s3://\(bucket)" : "s3://\(bucket)/\(prefix)"
        }
    }
}

extension String {
    func removingPercentEscapes() -> String {
        guard contains("%") else { return self }
        var bytes: [UInt8] = []
        var iterator = utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
               let value = UInt8(String(bytes: [high, low], encoding: .utf8) ?? "", radix: 16) {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
