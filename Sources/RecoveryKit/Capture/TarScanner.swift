/// Watches a tar stream go by and keeps the contents of a few small members (`backup_label`, the
/// tail of `backup_manifest`), without buffering the stream.
final class TarScanner {
    private let wanted: [String: Int]
    private(set) var captured: [String: [UInt8]] = [:]
    private var walker = TarWalker()
    /// Set once the stream could not be parsed: nothing more is captured (the backup then fails
    /// for want of `backup_label`, as for any stream that is not pg_basebackup's).
    private var failed = false

    /// - Parameter wanted: member names and how many bytes of each to keep (the last ones).
    init(wanted: [String: Int]) {
        self.wanted = wanted
    }

    func consume(_ bytes: UnsafeRawBufferPointer) {
        guard !failed else { return }
        do {
            try walker.feed(bytes) { event in
                guard case .data(let member, _, let chunk) = event, let limit = wanted[member.name] else { return }
                captured[member.name, default: []].append(contentsOf: chunk)
                if let count = captured[member.name]?.count, count > limit { captured[member.name]?.removeFirst(count - limit) }
            }
        } catch {
            failed = true
        }
    }

    /// A captured member as text.
    func text(_ name: String) -> String? {
        captured[name].map { String(decoding: $0, as: UTF8.self) }
    }
}
