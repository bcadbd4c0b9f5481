// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "SwiftDDP",
    products: [
        .library(name: "MPI", targets: ["MPI"]),
        .library(name: "HDF5", targets: ["HDF5"]),
    ],
    targets: [
        // MARK: C libraries (Debian packages; found through pkg-config)
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .systemLibrary(
            name: "CHDF5",
            pkgConfig: "hdf5",
            providers: [.apt(["libhdf5-dev"])]
        ),
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),

        // MARK: Safe Swift layers over the C libraries
        .target(name: "MPI", dependencies: ["CMPI"]),
        .target(name: "HDF5", dependencies: ["CHDF5"]),
    ]
)
