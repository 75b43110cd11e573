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
            // S3 keys are names, not paths: "prod/./app" is another prefix than "prod/app". An HTTP
            // client removes such segments from the URL after it was signed, so the requests would go
            // to another place than the one signed (refused by S3) or named (another repository's).
            if let segment = prefix.split(separator: "/", omittingEmptySubsequences: false).first(where: { $0 == "." || $0 == ".." }) {
                throw StorageError(.invalidLocation, object: text, message: "S3 repository prefix has a '\(segment)' path segment",
                                   hint: "write the prefix without '.' and '..' segments, e.g. s3://\(bucket)/\(Self.withoutDotSegments(prefix))")
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

    /// A prefix with its `.` / `..` segments resolved as a path would be: what the user most likely meant.
    private static func withoutDotSegments(_ prefix: String) -> String {
        var kept: [Substring] = []
        for segment in prefix.split(separator: "/") {
            if segment == ".." { _ = kept.popLast() } else if segment != "." { kept.append(segment) }
        }
        return kept.joined(separator: "/")
    }

    /// A local path made absolute (against the working directory) with its `.` and `..` segments and
    /// trailing slashes removed; links are not followed. What a process started elsewhere (the async
    /// pusher) must be given, and how a spool records which repository it serves.
    public var absolute: RepositoryLocation {
        guard case .local(let path) = self else { return self }
        var full = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        while full.contains("//") { full = full.replacingOccurrences(of: "//", with: "/") }
        return .local(path: URL(fileURLWithPath: full).standardized.path)
    }

    public var description: String {
        switch self {
        case .local(let path): return path
        case .s3(let bucket, let prefix): return prefix.isEmpty ? "s3://\(bucket)" : "s3://\(bucket)/\(prefix)"
        }
    }
}

extension String {
    /// Percent-escapes decoded to their bytes; a `%` not followed by two hex digits is kept as it is.
    func removingPercentEscapes() -> String {
        guard contains("%") else { return self }
        let input = Array(utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(input.count)
        var index = 0
        while index < input.count {
            if input[index] == UInt8(ascii: "%"), index + 2 < input.count,
               let high = Self.hexValue(input[index + 1]), let low = Self.hexValue(input[index + 2]) {
                bytes.append(high << 4 | low)
                index += 3
            } else {
                bytes.append(input[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
