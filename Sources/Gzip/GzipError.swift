/// A failure inside zlib, or a gzip stream that is damaged or incomplete.
public struct GzipError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, in the terms an operator can act on.
    public enum Kind: Sendable {
        /// The compressed data is not a valid gzip stream (bad header, bad CRC, bad length).
        case corrupt
        /// The stream ended before the gzip trailer.
        case truncated
        /// zlib itself failed while decompressing (out of memory, bad parameters).
        case library
        /// zlib failed while compressing (out of memory, bad parameters): nothing is wrong with any
        /// stored data, the capture could not be written.
        case compression
    }

    public let kind: Kind
    /// The operation that failed, such as `inflate`.
    public let operation: String
    /// zlib's own message, or ours when zlib has none.
    public let message: String

    public init(kind: Kind, operation: String, message: String) {
        self.kind = kind
        self.operation = operation
        self.message = message
    }

    public var description: String { "\(operation): \(message)" }
}
