namespace Nestor.Hypervisor.Devices.Storage;

/// <summary>Puts a VM's disks on its platform: opens each backend and attaches it to the controller of its interface
/// at the place docs/devices.md gives (ATA: primary channel, master then slave; virtio-blk: the next free
/// virtio-mmio slot; assigned: the next assigned-controller slot).</summary>
internal static class DiskAttachment
{
    /// <summary>Attaches every disk of <paramref name="vm"/>'s configuration; returns the opened backends, which the
    /// VM disposes (flushing them) when it is disposed.</summary>
    public static List<IBlockBackend> AttachAll(Vm vm)
    {
        var opened = new List<IBlockBackend>();
        try
        {
            int ata = 0, virtio = 0, assigned = 0;
            foreach (var disk in vm.Config.Disks)
            {
                var backend = disk.Backend ?? Open(disk);
                if (disk.Backend is null)
                {
                    opened.Add(backend);
                }
                switch (disk.Interface)
                {
                    case DiskInterface.Ata:
                        AttachAta(vm, backend, ata++);
                        break;
                    case DiskInterface.Virtio:
                        AttachVirtio(vm, backend, virtio++);
                        break;
                    case DiskInterface.Assigned:
                        AttachAssigned(vm, backend, assigned++);
                        break;
                    default:
                        throw new ArgumentOutOfRangeException(nameof(vm), disk.Interface, "unknown disk interface");
                }
            }
            return opened;
        }
        catch
        {
            foreach (var backend in opened)
            {
                backend.Dispose();
            }
            throw;
        }
    }

    // Each interface's owner replaces its method's body (the file-backed disk image, the ATA controller, virtio-blk,
    // the assigned controller).
    /// <summary>A raw image file, locked for this VM (docs/devices.md): <see cref="DiskImage"/>.</summary>
    private static IBlockBackend Open(DiskConfig disk) => DiskImage.Open(disk.Path, disk.ReadOnly);

    /// <summary>The primary ATA channel: the first if=ata disk is its master, the second its slave; the controller
    /// and its ports come with the first.</summary>
    private static void AttachAta(Vm vm, IBlockBackend backend, int index)
    {
        if (index >= Legacy.Ata.AtaController.DeviceCount)
        {
            throw new Errors.BadInputException(
                $"disk '{backend.Name}' is if=ata disk {index + 1}, and the ATA channel has two places (master and slave), both taken",
                "Attach at most two disks with if=ata; give the others if=virtio or if=assigned");
        }
        var controller = vm.Bus.PortDevice(Legacy.Ata.AtaController.CommandBlock) as Legacy.Ata.AtaController;
        if (controller is null)
        {
            controller = new Legacy.Ata.AtaController(vm.Interrupts[Legacy.Ata.AtaController.Gsi]);
            vm.Bus.Claim(controller, Legacy.Ata.AtaController.CommandBlock, Legacy.Ata.AtaController.CommandBlockPorts);
            vm.Bus.Claim(controller, Legacy.Ata.AtaController.ControlBlock, Legacy.Ata.AtaController.ControlBlockPorts);
            vm.AttachDevice(controller);
        }
        var statistics = new DiskStatistics();
        controller.Attach(index, backend, statistics);
        vm.AddDisk(new AttachedDisk(backend, DiskInterface.Ata, index, statistics));
    }

    /// <summary>virtio-blk in virtio-mmio slot <paramref name="index"/> (docs/devices.md).</summary>
    private static void AttachVirtio(Vm vm, IBlockBackend backend, int index) =>
        Virtio.VirtioSlots.Attach(vm, new Virtio.Block.VirtioBlock(backend), index);

    /// <summary>The dedicated controller of slot <paramref name="index"/> (docs/devices.md, "Dedicated"): its registers
    /// at 0xFEA00000 + index × 0x1000 (mapped into the guest under a VMM), its interrupt on GSI 10 + index, its DMA
    /// through its IOMMU.</summary>
    private static void AttachAssigned(Vm vm, IBlockBackend backend, int index)
    {
        if (index >= Assigned.AssignedDiskController.MaximumControllers)
        {
            throw new Errors.BadInputException(
                $"disk '{backend.Name}': the platform has {Assigned.AssignedDiskController.MaximumControllers} assigned-controller slots, and this is assigned disk {index + 1}",
                $"Give at most {Assigned.AssignedDiskController.MaximumControllers} disks with if=assigned, and the others another interface");
        }
        var statistics = new DiskStatistics();
        var controller = new Assigned.AssignedDiskController(vm, backend, index, statistics);
        vm.Bus.Claim(controller, controller.RegisterBase, Assigned.AssignedDiskController.RegisterStride);
        vm.AttachDevice(controller);
        vm.AddDisk(new AttachedDisk(backend, DiskInterface.Assigned, index, statistics));
    }
}
