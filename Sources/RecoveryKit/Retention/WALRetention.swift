/// Which archived WAL files a repository still needs: everything from the oldest kept physical base
/// backup's first segment on. Pure; unit-tested.
public enum WALRetention {
    /// The verdict on the WAL archive.
    public struct Plan: Codable, Sendable, Equatable {
        /// Keys to delete (segments and `.backup` files older than any kept base backup needs).
        public var delete: [String]
        public var kept: Int
        /// The first segment still needed, or nil when no physical backup is kept.
        public var oldestNeeded: String?
        public var note: String
        /// What each hold keeps, one line per hold ("kept 12 WAL file(s) from … on: held by the recovery
        /// prepared at …"), whether or not a kept base backup needs them too; nil without holds.
        public var held: [String]? = nil
    }

    /// WAL a prepared recovery still reads (`RecoveryHold`): every segment from `firstSegment` on,
    /// on the timelines it follows.
    public struct Hold: Sendable {
        public var firstSegment: String
        public var timelines: [UInt32]
        /// "held by the recovery prepared at …", for the plan.
        public var reason: String

        public init(firstSegment: String, timelines: [UInt32], reason: String) {
            self.firstSegment = firstSegment
            self.timelines = timelines
            self.reason = reason
        }

        /// Whether this hold keeps WAL file `name` (a segment, `.partial` or `.backup` file).
        func keeps(_ name: String, timeline: UInt32) -> Bool {
            timelines.contains(timeline) && position(String(name.prefix(24))) >= position(firstSegment)
        }
    }

    /// Plans WAL deletion.
    ///
    /// - Important: with no kept physical backup nothing is deleted (the archive may be in use by a
    ///   base backup being taken, or wanted for forensics); `.history` files are always kept.
    /// - Parameters:
    ///   - keys: repository keys under `wal/` (e.g. `wal/00000001/000000010000000000000003.gz`).
    ///   - keptPhysical: the WAL ranges of the physical backups retention keeps.
    ///   - holds: WAL prepared recoveries still read: never deleted.
    public static func plan(keys: [String], keptPhysical: [BackupManifest.Physical], holds: [Hold] = []) -> Plan {
        guard let oldest = keptPhysical.min(by: { position($0.firstWalSegment) < position($1.firstWalSegment) }) else {
            return Plan(delete: [], kept: keys.count, oldestNeeded: nil, note: "no physical backup is kept: WAL left alone")
        }
        let needed = position(oldest.firstWalSegment)
        var delete: [String] = []
        var heldBack: [Int: Int] = [:]
        for key in keys {
            let name = String(key.split(separator: "/").last ?? "")
            // `.history` files are tiny and needed to follow any timeline switch: never deleted.
            guard !name.contains(".history"), name.count >= 24, let timeline = UInt32(name.prefix(8), radix: 16) else { continue }
            let segment = position(String(name.prefix(24)))
            let keptBy = holds.indices.filter { holds[$0].keeps(name, timeline: timeline) }
            for hold in keptBy { heldBack[hold, default: 0] += 1 }
            if timeline <= UInt32(oldest.timeline) && segment < needed && keptBy.isEmpty { delete.append(key) }
        }
        var plan = Plan(delete: delete, kept: keys.count - delete.count, oldestNeeded: oldest.firstWalSegment,
                        note: "WAL before \(oldest.firstWalSegment) is needed by no kept base backup")
        let held = holds.indices.map { "kept \(heldBack[$0] ?? 0) WAL file(s) from \(holds[$0].firstSegment) on: \(holds[$0].reason)" }
        plan.held = held.isEmpty ? nil : held
        return plan
    }

    /// The position of a segment within the WAL, ignoring the timeline: log × 2³² + segment.
    static func position(_ segment: String) -> UInt64 {
        let characters = Array(segment)
        guard characters.count >= 24, let log = UInt64(String(characters[8..<16]), radix: 16),
              let number = UInt64(String(characters[16..<24]), radix: 16) else { return 0 }
        return log << 32 | number
    }
}
