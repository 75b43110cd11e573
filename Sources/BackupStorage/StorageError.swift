/// A failure of a backup store, naming the object and what to do about it.
public struct StorageError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        case notFound
        case permissionDenied
        case diskFull
        case readOnly
        /// Another process holds the repository lock.
        case locked
        /// A key or repository address that cannot be used.
        case invalidLocation
        /// The remote service answered with an error, or stopped answering.
        case remote
        /// The object exists but is archived (e.g. S3 Glacier) and must be restored first.
        case archived
        case io
    }

    public let kind: Kind
    /// The path or key concerned.
    public let object: String
    public let message: String
    /// What to do next, when we know.
    public let hint: String?

    public init(_ kind: Kind, object: String, message: String, hint: String? = nil) {
        self.kind = kind
        self.object = object
        self.message = message
        self.hint = hint
    }

    public var description: String { "\(object): \(message)" }
}
