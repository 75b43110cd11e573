/// Watches a tar stream go by and keeps the contents of a few small members (`backup_label`, the
/// tail of `backup_manifest`), without buffering the stream.
final class TarScanner {
    private let wanted: [String: Int]
    private(set) var captured: [String: [UInt8]] = [:]
    private var header: [UInt8] = []
    private var current: String?
    private var remaining: UInt64 = 0
    private var padding: UInt64 = 0

    /// - Parameter wanted: member names and how many bytes of each to keep (the last ones).
    init(wanted: [String: Int]) {
        self.wanted = wanted
        header.reserveCapacity(512)
    }

    func consume(_ bytes: UnsafeRawBufferPointer) {
        var index = 0
        while index < bytes.count {
            if remaining > 0 {
                let take = Int(min(remaining, UInt64(bytes.count - index)))
                if let name = current, let limit = wanted[name] {
                    captured[name, default: []].append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                    if let count = captured[name]?.count, count > limit { captured[name]?.removeFirst(count - limit) }
                }
                remaining -= UInt64(take)
                index += take
            } else if padding > 0 {
                let take = Int(min(padding, UInt64(bytes.count - index)))
                padding -= UInt64(take)
                index += take
            } else {
                let take = min(512 - header.count, bytes.count - index)
                header.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                index += take
                if header.count == 512 { parseHeader() }
            }
        }
    }

    private func parseHeader() {
        defer { header.removeAll(keepingCapacity: true) }
        guard header.contains(where: { $0 != 0 }) else { current = nil; return }   // end-of-archive blocks
        let name = String(decoding: header[0..<100].prefix { $0 != 0 }, as: UTF8.self)
        let sizeText = String(decoding: header[124..<136].prefix { $0 != 0 && $0 != 32 }, as: UTF8.self)
        let size = UInt64(sizeText, radix: 8) ?? 0
        let stripped = name.hasPrefix("./") ? String(name.dropFirst(2)) : name
        current = stripped
        remaining = size
        padding = (512 - size % 512) % 512
    }

    /// A captured member as text.
    func text(_ name: String) -> String? {
        captured[name].map { String(decoding: $0, as: UTF8.self) }
    }
}
