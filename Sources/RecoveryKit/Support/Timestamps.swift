/// The one UTC timestamp formatter (`Timestamp`, in Sources/UTCTime so BackupStorage can use it too),
/// re-exported so every user of RecoveryKit formats and parses times the same way.
@_exported import UTCTime
